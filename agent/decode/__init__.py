"""Decoding: CAN databases (dbc, kcd, arxml, sym via cantools) and per-frame-id decoders."""

from agent.decode.database import DatabaseError, load_databases
from agent.decode.decoder import FrameDecoder, MessageDecoder, ShortFrameError

__all__ = ["DatabaseError", "FrameDecoder", "MessageDecoder", "ShortFrameError", "load_databases"]
