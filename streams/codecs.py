"""The orjson codec, registered with faust as ``"orjson"``."""

from __future__ import annotations

from typing import Any

import orjson
from faust.serializers import codecs


class OrjsonCodec(codecs.Codec):
    """JSON via orjson: bytes in, bytes out; pydantic models are dumped first."""

    def _dumps(self, obj: Any) -> bytes:
        if hasattr(obj, "model_dump"):
            obj = obj.model_dump(mode="json")
        return orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


def register() -> None:
    codecs.register("orjson", OrjsonCodec())
