"""Model definitions: the decoder (and, with issue 4, vision towers, projector, LVLM)."""
