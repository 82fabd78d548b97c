"""Per-frame-id decoders, built once per config so the hot path is one dict lookup and one call.

cantools stays the reference decoder: every value we produce equals `Message.decode` with
`decode_choices=False` (numbers, scaled, with offsets). Choice labels are looked up only where the
user asked for labels.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cantools.database import Database
from cantools.database.can.message import Message

from agent.decode.fast import scaling_of

Value = float | int | str


class ShortFrameError(ValueError):
    """A frame shorter than its message's length in the database."""


@dataclass(slots=True)
class MessageDecoder:
    """Decodes the payload of one message into {signal: value}."""

    message: Message
    name: str = ""
    frame_id: int = 0
    length: int = 0
    signals: tuple[str, ...] = ()
    scaling: dict[str, tuple[float, float]] = field(default_factory=dict)
    _choices: dict[str, dict[int, str]] | None = None

    def __post_init__(self) -> None:
        m = self.message
        self.name, self.frame_id, self.length = m.name, m.frame_id, m.length
        self.signals = tuple(s.name for s in m.signals)
        self.scaling = {s.name: scaling_of(s) for s in m.signals}

    @property
    def choices(self) -> dict[str, dict[int, str]]:
        """{signal: {raw value: label}} of the enum signals, built at the first use: only labels
        (`collection.labels`) and campaigns' label conditions read them, and a production car's
        value tables copied for every message are half a megabyte."""
        if self._choices is None:
            m = self.message
            self._choices = {s.name: {int(k): str(v) for k, v in s.choices.items()} for s in m.signals if s.choices}
        return self._choices

    def decode(self, data: bytes) -> dict[str, float | int]:
        """Scaled values of the signals present in `data` (for multiplexed messages: the active page)."""
        if len(data) < self.length:
            raise ShortFrameError(f"{self.name} needs {self.length} bytes, frame has {len(data)}")
        # cantools' hint covers containers and labels; a plain message without choices gives numbers
        return self.message.decode(data, decode_choices=False)  # type: ignore[return-value]

    def label(self, signal: str, value: float | int) -> Value:
        """The choice label of an enum value, or the value itself."""
        table = self.choices.get(signal)
        if table is None:
            return value
        try:
            return table.get(int(value), value)
        except (ValueError, OverflowError):  # NaN, inf: no label
            return value


_DECODERS: weakref.WeakKeyDictionary[Database, dict[int, MessageDecoder]] = weakref.WeakKeyDictionary()


class FrameDecoder:
    """All messages of a database by frame id; unknown ids return None.

    The message decoders of a database are built once and shared (read only) by every FrameDecoder
    of it: `load_databases` hands a config swap the same parsed database when its files did not
    change, and building 1,000 messages' decoders again was two fifths of such a swap (issue 19)."""

    def __init__(self, db: Database, keep: Callable[[Message], bool] | None = None) -> None:
        if keep is None:
            by_id = _DECODERS.get(db)
            if by_id is None:
                by_id = _DECODERS[db] = {m.frame_id: MessageDecoder(m) for m in db.messages}
            self.by_id: dict[int, MessageDecoder] = by_id
        else:
            self.by_id = {m.frame_id: MessageDecoder(m) for m in db.messages if keep(m)}

    def get(self, frame_id: int) -> MessageDecoder | None:
        return self.by_id.get(frame_id)

    @property
    def messages(self) -> Iterable[MessageDecoder]:
        return self.by_id.values()
