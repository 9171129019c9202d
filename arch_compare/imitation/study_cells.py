"""A study's cells (model x source x amount of its random-data imitation runs) and the recipes
that apply to each (`StudyConfig.recipes`, `recipes.py`), checked when the study is built.

JAX-free, like the configuration that calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arch_compare.recipes import FULL, Recipe

if TYPE_CHECKING:
    from arch_compare.imitation.config import StudyConfig
    from arch_compare.post_training import PostTraining

RANDOM = "random"  # the selection whose runs are the cells: answers bought in the pool's order


def cells(config: "StudyConfig", recipe: "Recipe | PostTraining | None" = None
          ) -> list[tuple[str, str, int]]:
    """The (model, source, amount) cells in plan order; with `recipe` (or a post-training
    entry), those it applies to."""
    return [(model.name, source.name, amount) for model in config.models
            for source in config.sources_for(model)
            if RANDOM in source.selection.strategies_for(model.name)
            for amount in source.amounts
            if recipe is None or recipe.applies_to(model.name, source.name, amount)]


def recipes_for(config: "StudyConfig", model: str, source: str,
                amount: int) -> tuple[Recipe, ...]:
    """The recipes a cell runs beside its `full` run, in the study's order."""
    return tuple(recipe for recipe in config.recipes if recipe.kind != FULL.kind
                 and recipe.applies_to(model, source, amount))


def _check_selection(config: "StudyConfig", entry, where: str) -> list[tuple[str, str, int]]:
    """An entry's models, sources and amounts are the study's, and it selects a cell: those."""
    known = {"models": {model.name for model in config.models},
             "sources": {source.name for source in config.sources},
             "amounts": {amount for source in config.sources for amount in source.amounts}}
    for field, names in known.items():
        unknown = sorted(set(getattr(entry, field) or ()) - names)
        if unknown:
            raise ValueError(f"{where}: {field} {unknown} are not in the study (its "
                             f"{field}: {sorted(names)})")
    selected = cells(config, entry)
    if not selected:
        raise ValueError(f"{where}: selects no cell (a model x source x amount whose source "
                         f"trains that model on random data)")
    return selected


def check_post_training(config: "StudyConfig") -> None:
    """Each post-training entry selects cells of the study, and its run label is not a
    recipe's (both are runs `<cell>/<label>`)."""
    labels = {label for recipe in config.recipes for label in recipe.labels()} | {FULL.name}
    for entry in config.post_training:
        where = f"post_training {entry.name!r}"
        if entry.name in labels:
            raise ValueError(f"{where}: a recipe's run is labelled {entry.name!r} already")
        _check_selection(config, entry, where)


def check_recipes(config: "StudyConfig") -> None:
    """Each recipe names only the study's models, sources and amounts and selects a cell; its
    run labels are distinct; a `mix` recipe has text to mix in for every model it trains."""
    models = {model.name: model for model in config.models}
    labels = [label for recipe in config.recipes for label in recipe.labels()]
    if len(set(labels)) != len(labels):
        raise ValueError(f"recipes: run labels repeat: {labels}")
    for recipe in config.recipes:
        where = f"recipes: recipe {recipe.name!r}"
        if recipe.kind == FULL.kind and recipe.name != FULL.name:
            raise ValueError(f"{where}: every cell has its 'full' run already; a second one "
                             f"would repeat it step for step")
        selected = _check_selection(config, recipe, where)
        if recipe.kind == "mix" and recipe.mix_task is None:
            for name in sorted({model for model, _, _ in selected}):
                if models[name].pretraining is None:
                    raise ValueError(f"{where}: model {name!r} is not pre-trained here, so it has "
                                     f"no pre-training task to mix in; give the recipe a "
                                     f"mix_task")


def mix_task(config: "StudyConfig", recipe: Recipe, model: str) -> str:
    """The text a `mix` recipe mixes into `model`'s imitation data."""
    if recipe.mix_task is not None:
        return recipe.mix_task
    return next(m for m in config.models if m.name == model).pretraining.task
