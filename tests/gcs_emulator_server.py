"""gcp-storage-emulator with GCS's generation preconditions enforced; run as a script, same flags as
``gcp-storage-emulator``.

The emulator ignores ``ifGenerationMatch`` / ``ifGenerationNotMatch`` (and the ``ifSource...`` forms), so a
create-only-if-absent upload overwrites and a delete of a stale generation deletes. Real GCS answers 412; a
test of a publish protocol built on those conditions needs that answer. This wraps the emulator's JSON-API
handlers and checks the conditions first, against the object's current generation, as GCS does (a write's
target that does not exist has generation 0; a missing object to read, delete or copy from is a 404 first):

- uploads (media, multipart, resumable: at initiation and again on every chunk, where GCS checks once when it
  finalizes; the difference shows only if the object changes between the two), compose, patch, get, download
  and delete: the named object;
- copy and rewrite: ``ifGeneration...`` on the destination, ``ifSourceGeneration...`` on the source.

Not covered: batch requests (Beam's rename and delete use them, without conditions), metageneration
conditions, the XML API. The server handles one request at a time, so a check and its write are atomic.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_PRECONDITION_FAILED = {"error": {
    "code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
    "errors": [{"domain": "global", "reason": "conditionNotMet",
                "message": "At least one of the pre-conditions you specified did not hold."}]}}


def _generation(storage, bucket: str, name: str):
  """The object's generation; 0 if it does not exist, None if that is an error anyway (404 wins over 412)."""
  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return None


def _upload_name(request):
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data
  if isinstance(data, dict):
    return (data.get("meta") or data).get("name")
  return None


def _targets(handler, request, storage):
  """(bucket, object name, query parameter prefix, may be absent) of each object a request's conditions apply
  to; an object that may be absent counts as generation 0 (a write's target), else its absence is a 404."""
  params = request.params or {}
  if handler in (objects.copy, objects.rewrite):
    return [(params["dest_bucket_name"], params["dest_object_id"], "ifGeneration", True),
            (params["bucket_name"], params["object_id"], "ifSourceGeneration", False)]
  if handler is objects.upload_partial or (handler is objects.insert and "upload_id" in request.query):
    try:
      pending = storage.get_resumable_file_obj(request.query["upload_id"][0])
    except NotFound:
      return []
    return [(pending["bucket"], pending["name"], "ifGeneration", True)]
  if handler is objects.insert:
    name = _upload_name(request)
    return [(params["bucket_name"], name, "ifGeneration", True)] if name else []
  if handler is objects.compose:
    return [(params["bucket_name"], params["object_id"], "ifGeneration", True)]
  if handler in (objects.patch, objects.get, objects.download, objects.delete):
    return [(params["bucket_name"], params["object_id"], "ifGeneration", False)]
  return []


def _holds(query, prefix: str, generation: int) -> bool:
  match, not_match = query.get(prefix + "Match"), query.get(prefix + "NotMatch")
  if match and int(match[0]) != generation:
    return False
  if not_match and int(not_match[0]) == generation:
    return False
  return True


def _guarded(handler):
  def guarded(request, response, storage, *args, **kwargs):
    for bucket, name, prefix, may_be_absent in _targets(handler, request, storage):
      if storage.get_bucket(bucket) is None:
        continue  # the handler answers 404
      generation = _generation(storage, bucket, name)
      if generation is None and may_be_absent:
        generation = 0
      if generation is not None and not _holds(request.query, prefix, generation):
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json(_PRECONDITION_FAILED)
        return None
    return handler(request, response, storage, *args, **kwargs)
  return guarded


def enforce_preconditions() -> None:
  """Replaces the router's table (read on every request) with guarded handlers."""
  server.HANDLERS = tuple((regex, {method: _guarded(handler) for method, handler in methods.items()})
                          for regex, methods in server.HANDLERS)


if __name__ == "__main__":
  enforce_preconditions()
  main(sys.argv[1:])
