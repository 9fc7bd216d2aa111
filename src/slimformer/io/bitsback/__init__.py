"""Bits-back storage of rotation-symmetric (SliceGPT-style) models: ``pack`` / ``unpack``.

See :mod:`slimformer.io.bitsback.codec` for the file layout and the guarantees,
:mod:`.groups` for which tensors share a rotation, :mod:`.rotation` for the
discretised rotations and :mod:`.floatcode` for the entropy coder.
"""

from .codec import PACK_FORMAT_VERSION, PackFormatError, PackStats, decode, pack, read_container, unpack

__all__ = ["PACK_FORMAT_VERSION", "PackFormatError", "PackStats", "decode", "pack", "read_container", "unpack"]
