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

The emulator also builds each object's ``mediaLink`` with the name unquoted, and google-cloud-storage downloads
from that link: a name holding ``?`` is cut at it (404). GCS percent-encodes the name; so does this server.

It also takes one test-only fault: ``POST /_test/list_fault`` with ``{"prefix": P, "status": 403, "times": N}``
makes the next N listings whose ``prefix`` starts with P answer that status (a GCS-shaped error); ``times`` 0
disarms it. Only from 127.0.0.1, and bounded (N at most 100), so a test that forgets to disarm it cannot break
other tests' listings for long; a listing of any other prefix is never affected.
"""

import sys
import threading
from http import HTTPStatus
from urllib import parse

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


def quote_media_links() -> None:
  """Object resources carry the name percent-encoded in ``mediaLink``, as GCS sends them."""
  make = objects._make_object_resource  # pylint: disable=protected-access

  def make_quoted(base_url, bucket_name, object_name, *args, **kwargs):
    resource = make(base_url, bucket_name, object_name, *args, **kwargs)
    resource["mediaLink"] = (f"{base_url}/download/storage/v1/b/{bucket_name}/o/{parse.quote(object_name, safe='')}"
                             f"?generation={resource['generation']}&alt=media")
    return resource
  objects._make_object_resource = make_quoted  # pylint: disable=protected-access


_FAULT_LOCK = threading.Lock()
_LIST_FAULT = {"prefix": "", "status": 0, "times": 0}
_MAX_TIMES = 100


def _error(response, status: HTTPStatus, message: str) -> None:
  response.status = status
  response.json({"error": {"code": status.value, "message": message,
                           "errors": [{"domain": "global", "reason": status.phrase, "message": message}]}})


def _list_fault(request, response, storage, *args, **kwargs):
  """The control endpoint: arms the listing fault (``times`` 0 disarms it); loopback clients only."""
  del storage, args, kwargs
  if request._request_handler.client_address[0] != "127.0.0.1":  # pylint: disable=protected-access
    _error(response, HTTPStatus.FORBIDDEN, "the fault switch answers loopback clients only")
    return
  body = request.data if isinstance(request.data, dict) else {}  # a JSON body arrives parsed
  status = HTTPStatus(int(body.get("status", 403)))
  if status.value < 400 or not isinstance(body.get("prefix"), str):
    _error(response, HTTPStatus.BAD_REQUEST, "need a string prefix and an error status")
    return
  with _FAULT_LOCK:
    _LIST_FAULT.update(prefix=body["prefix"], status=status.value,
                       times=max(0, min(int(body.get("times", 1)), _MAX_TIMES)))
    response.json(dict(_LIST_FAULT))


def _faulty(handler):
  """A listing handler that answers the armed error to listings under the armed prefix."""
  def faulty(request, response, storage, *args, **kwargs):
    prefix = (request.query.get("prefix") or [""])[0]
    with _FAULT_LOCK:
      armed = _LIST_FAULT["times"] > 0 and prefix.startswith(_LIST_FAULT["prefix"])
      if armed:
        _LIST_FAULT["times"] -= 1
        status = HTTPStatus(_LIST_FAULT["status"])
    if armed:
      _error(response, status, f"injected fault: listing {prefix!r} fails with {status.value}")
      return None
    return handler(request, response, storage, *args, **kwargs)
  return faulty


def inject_list_faults() -> None:
  """Adds the control endpoint first in the router's table and wraps every listing handler."""
  routes = tuple((regex, {method: _faulty(handler) if handler is objects.ls else handler
                          for method, handler in methods.items()}) for regex, methods in server.HANDLERS)
  server.HANDLERS = ((r"^/_test/list_fault$", {"POST": _list_fault}),) + routes


if __name__ == "__main__":
  quote_media_links()
  inject_list_faults()  # first: it finds the emulator's own listing handler
  enforce_preconditions()
  main(sys.argv[1:])
