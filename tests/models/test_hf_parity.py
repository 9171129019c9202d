"""Logit parity with transformers' PyTorch models on the same random float32 weights."""

import arch_compare
from tests.models.hf_references import (TOLERANCE, assert_untied_t5, flat_params, hf_logits,
                                        make_batch, max_abs_diff, our_logits)


def test_reference_is_what_the_case_says(reference):
    """Guard the references themselves: an accidentally tied T5 v1.1 would prove nothing."""
    head = reference.model.get_output_embeddings().weight
    embedding = reference.model.get_input_embeddings().weight
    assert (head.data_ptr() == embedding.data_ptr()) == reference.case.tied
    if reference.case.encoder_decoder and not reference.case.tied:
        assert_untied_t5(reference.model, reference.directory)


def test_loaded_config_matches_checkpoint(reference):
    model, params = arch_compare.load_hf_checkpoint(reference.directory)
    config = model.config
    assert config.tie_embeddings == reference.case.tied
    assert ("output_head/projection/kernel" in flat_params(params)) == (not reference.case.tied)
    if reference.case.encoder_decoder:
        # T5 v1.0 scales decoder outputs by d_model**-0.5 before its tied head; v1.1/UL2 do not.
        assert config.scale_decoder_outputs == reference.case.tied
        assert config.head_dim == reference.model.config.d_kv
        assert config.num_layers == reference.model.config.num_decoder_layers
        assert config.num_encoder_layers == reference.model.config.num_layers
    if reference.name == "llama-gqa":
        assert config.num_kv_heads < config.num_heads


def test_logits_match_transformers(reference):
    model, params = arch_compare.load_hf_checkpoint(reference.directory)
    batch = make_batch(reference.case.encoder_decoder)
    expected = hf_logits(reference.model, batch)
    diff = max_abs_diff(our_logits(model, params, batch), expected)
    print(f"{reference.name}: max |diff| {diff:.2e}, max |logit| {abs(expected).max():.2f}")
    assert diff <= TOLERANCE
