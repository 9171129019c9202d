"""Preference optimisation after imitation: pairs of a preferred and a rejected answer to one
prompt (from a file, the target as judge, execution checks, or the target's revisions) and the
objectives that train on them without a reward model (DPO, IPO)."""
