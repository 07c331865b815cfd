"""THOR checkpoints: the released ``thor_v1_vit_<size>.pt`` files hold the whole pretraining model
(encoder and decoder); the encoder's weights are the ``encoder.*`` entries."""

from __future__ import annotations

import re
from collections.abc import Mapping

THOR_DROP = re.compile(r"^(decoder_|decode_|ref_pos_embed|pos_embed)")


def thor_encoder_state(state: Mapping, path: str) -> tuple[dict, dict]:
    """Select the THOR encoder weights: keys under ``encoder.`` (prefix stripped) when there are any,
    else the flat dict; keys matching ``decoder_*``, ``decode_*``, ``ref_pos_embed*``, ``pos_embed*``
    are dropped. Returns ``(encoder state, info)``."""
    enc_keys = [k for k in state if k.startswith("encoder.")]
    if enc_keys:
        selected = {k[len("encoder."):]: state[k] for k in enc_keys}
        other = [k for k in state if not k.startswith("encoder.")]
        prefix = "encoder."
    else:
        selected, other, prefix = dict(state), [], ""
    dropped = [k for k in selected if THOR_DROP.match(k)]
    for k in dropped:
        del selected[k]
    info = {"key_prefix_stripped": prefix, "dropped_keys": len(dropped), "ignored_non_encoder_keys": len(other)}
    return selected, info
