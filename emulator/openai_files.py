"""OpenAI's Files API (and Azure OpenAI's, under ``/openai/``): uploads, metadata, contents
(cut off on demand), deletes."""

from __future__ import annotations

import time

from aiohttp import BodyPartReader, web

from emulator.core import Core, StoredFile, error, json_response
from emulator.strict import MAX_FILE_BYTES


class OpenAIFiles:
    """Files, stored on the :class:`~emulator.core.Core`."""

    def __init__(self, core: Core) -> None:
        self.e = core

    def routes(self, prefix: str) -> list[web.RouteDef]:
        return [
            web.post(f"{prefix}/files", self.upload_file),
            web.get(f"{prefix}/files/{{id}}", self.retrieve_file),
            web.get(f"{prefix}/files/{{id:.+}}/content", self.file_content),
            web.delete(f"{prefix}/files/{{id}}", self.delete_file),
        ]

    async def upload_file(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        purpose, filename, data = "", "upload", b""
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or filename
                data = bytes(await part.read())
        if purpose not in ("batch", "assistants", "fine-tune", "user_data", "evals", "vision"):
            return error(400, f"Invalid purpose {purpose!r}", param="purpose")
        if self.e.faults.upload_500 > 0:
            self.e.faults.upload_500 -= 1
            self.e.stats["upload_500"] += 1
            return error(500, "The server had an error while processing your request.")
        if len(data) > MAX_FILE_BYTES:
            return error(400, f"File is too large: {len(data)} bytes, the limit is {MAX_FILE_BYTES}.", param="file")
        stored = StoredFile(self.e._new_id("file"), purpose, filename, data, int(time.time()))
        self.e.files[stored.id] = stored
        self.e.stats["files_uploaded"] += 1
        return json_response(stored.as_json())

    async def retrieve_file(self, request: web.Request) -> web.Response:
        stored = self.e.files.get(request.match_info["id"])
        if stored is None:
            return error(404, "No such File object", param="id")
        return json_response(stored.as_json())

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        # a file named by a URL (foreign_file_origin): the gateway serves it by its last segment
        stored = self.e.files.get(request.match_info["id"].rsplit("/", 1)[-1])
        if stored is None:
            return error(404, "No such File object", param="id")
        return await self.e.download(request, stored.data, "application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["id"]
        if self.e.files.pop(file_id, None) is None:
            return error(404, "No such File object", param="id")
        return json_response({"id": file_id, "object": "file", "deleted": True})
