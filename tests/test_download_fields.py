"""The file fields the cloud's documents share (agent/download.HttpsUrl, Sha256Hex): the remote
`databases` document and the `software_update` document accept the same URLs and digests, refuse the
rest in the same words, and a refusal never repeats a URL's query (a SAS token) or its user info."""

from __future__ import annotations

import base64
import re
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.config import validation_errors
from agent.download import FileSpec
from agent.ota.model import SoftwareUpdate
from agent.remotedb.document import parse_document

pytestmark = [pytest.mark.remote_dbc, pytest.mark.ota]

GOOD_SHA = "0" * 64
GOOD_URL = "https://blob.example/f.bin"
QUERY_SECRET, USER_SECRET = "QS3CR3T", "PW5ECRET"
# every way a URL is refused, in words that never come from the URL
URL_REFUSAL = re.compile(r"url: must be an https:// URL( without spaces or control characters|: its host or port "
                         r"cannot be read|, not http://| with a host name| of at most 4096 characters)?")
SHA_REFUSAL = "sha256: must be 64 lowercase hex digits"


def refusals(url: str, sha256: str) -> dict[str, list[str]]:
    """What each document says of a file with this url and sha256 ([] for accepted)."""
    said: dict[str, list[str]] = {}
    try:
        parse_document({"version": "v1", "files": [{"name": "a.dbc", "url": url, "sha256": sha256, "size": 1}]})
        said["databases"] = []
    except ValueError as exc:
        said["databases"] = [line.removeprefix("databases.files[0].") for line in str(exc).split("; ")]
    try:
        SoftwareUpdate.model_validate({"id": "u-1", "version": "2.0", "url": url, "sha256": sha256, "size": 1,
                                       "signature": base64.b64encode(b"s" * 64).decode()})
        said["software_update"] = []
    except ValidationError as exc:
        said["software_update"] = validation_errors(exc)
    return said


# a URL built from parts whose validity is known: only https (any case) with a host, a readable port and
# no space or control character anywhere is one
SCHEMES = {"https": True, "HTTPS": True, "Https": True, "http": False, "ftp": False, "": False, "https:": False}
HOSTS = {"blob.example": True, "10.0.0.7": True, "[::1]": True, "": False, "[::1": False}
PORTS = {"": True, ":443": True, ":65535": True, ":65536": False, ":x": False}
USERS = ["", f"u:{USER_SECRET}@", f"{USER_SECRET}@"]


@settings(max_examples=300, deadline=None)
@given(scheme=st.sampled_from(sorted(SCHEMES)), user=st.sampled_from(USERS), host=st.sampled_from(sorted(HOSTS)),
       port=st.sampled_from(sorted(PORTS)), path=st.text(max_size=20), query=st.text(max_size=30))
@example(scheme="https", user="", host="blob.example", port="", path="/f.bin", query="\n")
def test_a_url_is_accepted_only_if_valid_and_its_refusal_never_shows_a_secret(
        scheme: str, user: str, host: str, port: str, path: str, query: str) -> None:
    path = "/" + path.replace("?", "").replace("#", "")
    url = f"{scheme}://{user}{host}{port}{path}?sig={QUERY_SECRET}{query}"
    clean = all(c.isprintable() and c != " " for c in path + query)
    valid = SCHEMES[scheme] and HOSTS[host] and PORTS[port] and clean
    for document, said in refusals(url, GOOD_SHA).items():
        assert (said == []) is valid, (document, url, said)
        assert all(URL_REFUSAL.fullmatch(line) for line in said), said
        assert QUERY_SECRET not in str(said) and USER_SECRET not in str(said)
    assert (FileSpec(url, GOOD_SHA, 1).problem(10) is None) is valid, "the downloader refuses the same URLs"


@settings(max_examples=300, deadline=None)
@given(url=st.text(max_size=60) | st.text(max_size=40).map(lambda t: "https://" + t),
       sha256=st.text("0123456789abcdefA \n", min_size=63, max_size=65) | st.text(max_size=70))
@example(url="https://h/" + "x" * 4096, sha256=GOOD_SHA)
@example(url=GOOD_URL, sha256=GOOD_SHA + "\n")
def test_any_string_is_a_file_field_or_a_refusal_in_fixed_words(url: str, sha256: str) -> None:
    sha_ok = len(sha256) == 64 and set(sha256) <= set("0123456789abcdef")
    said = refusals(url, sha256)
    assert said["databases"] == said["software_update"], "both documents refuse a file the same way"
    url_lines = [line for line in said["databases"] if line.startswith("url: ")]
    assert all(URL_REFUSAL.fullmatch(line) for line in url_lines), url_lines
    assert [line for line in said["databases"] if line.startswith("sha256")] == ([] if sha_ok else [SHA_REFUSAL])
    if not url_lines:   # accepted: what the downloader can fetch
        parts = urlsplit(url)
        assert parts.scheme == "https" and parts.hostname and len(url) <= 4096
    assert (FileSpec(url, sha256, 1).problem(10) is None) is (not said["databases"])


def test_the_documents_words_for_a_bad_url_and_digest() -> None:
    said = refusals(f"http://blob.example/f.bin?sig={QUERY_SECRET}", "A" * 64)
    assert said["databases"] == said["software_update"] == ["url: must be an https:// URL, not http://", SHA_REFUSAL]
    assert refusals(f"https://{USER_SECRET}@/f.bin", GOOD_SHA)["databases"] == [
        "url: must be an https:// URL with a host name"]
    assert refusals(GOOD_URL, GOOD_SHA) == {"databases": [], "software_update": []}


DOC = {"version": "2024.06-ecu17", "files": [
    {"name": "pt/powertrain.dbc", "url": f"https://{USER_SECRET}@blob.example:8443/v/pt.dbc?sig={QUERY_SECRET}",
     "sha256": "a" * 64, "size": 1234},
    {"name": "body.kcd", "url": "https://blob.example/v/body.kcd", "sha256": "b" * 64, "size": 99}]}


def test_a_databases_document_as_an_ack_repeats_it_and_its_files_as_the_downloader_takes_them() -> None:
    doc = parse_document(DOC)
    shown = {"version": "2024.06-ecu17", "files": [
        {"name": "pt/powertrain.dbc", "url": "https://blob.example:8443/v/pt.dbc", "sha256": "a" * 64, "size": 1234},
        {"name": "body.kcd", "url": "https://blob.example/v/body.kcd", "sha256": "b" * 64, "size": 99}]}
    assert doc.redacted() == shown
    from agent.remotedb.document import redacted_value

    assert redacted_value(DOC) == shown
    assert redacted_value({**DOC, "version": ""}) is None and redacted_value("v1") is None
    assert [f.spec() for f in doc.files] == [FileSpec(DOC["files"][0]["url"], "a" * 64, 1234),
                                              FileSpec("https://blob.example/v/body.kcd", "b" * 64, 99)]


def test_a_versions_key_is_its_name_and_what_its_files_are() -> None:
    key = parse_document(DOC).key
    assert re.fullmatch(r"2024\.06-ecu17-[0-9a-f]{12}", key)
    assert parse_document({**DOC, "files": DOC["files"][::-1]}).key == key, "the order files are listed in is no matter"
    other_url = [{**DOC["files"][0], "url": "https://elsewhere.example/pt.dbc"}, DOC["files"][1]]
    assert parse_document({**DOC, "files": other_url}).key == key, "where a file comes from is no matter"
    for change in ({"sha256": "c" * 64}, {"size": 1235}, {"name": "pt/other.dbc"}):
        files = [{**DOC["files"][0], **change}, DOC["files"][1]]
        assert parse_document({**DOC, "files": files}).key != key, change
    assert parse_document({**DOC, "version": "v2"}).key.startswith("v2-")


def test_the_edges_of_what_a_file_field_and_a_header_may_be() -> None:
    from agent.download import (
        MAX_URL_CHARS,
        _refuse,
        header_int,
        https_url_problem,
        parse_content_range,
        parse_retry_after,
        redact,
        sha256_problem,
    )

    longest = "https://h.example/" + "x" * (MAX_URL_CHARS - len("https://h.example/"))
    assert len(longest) == MAX_URL_CHARS and https_url_problem(longest) is None
    assert https_url_problem(longest + "x") == f"must be an https:// URL of at most {MAX_URL_CHARS} characters"
    assert https_url_problem("https://h.example/a b") == "must be an https:// URL without spaces or control characters"
    assert https_url_problem("ftp://h.example/a") == "must be an https:// URL"
    assert https_url_problem("http://h.example/a") == "must be an https:// URL, not http://"
    check = _refuse(sha256_problem)
    assert check("0" * 64) == "0" * 64
    with pytest.raises(ValueError, match="^must be 64 lowercase hex digits$"):
        check("0" * 63)

    spec = FileSpec(GOOD_URL, GOOD_SHA, 10)
    assert spec.problem(10) is None and FileSpec(GOOD_URL, GOOD_SHA, 1).problem(10) is None
    assert spec.problem(9) == "size: must be between 1 and 9 bytes"
    assert FileSpec(GOOD_URL, GOOD_SHA, 0).problem(10) == "size: must be between 1 and 10 bytes"

    assert header_int("9" * 19) == 10**19 - 1 and header_int("1" * 20) is None and header_int(" ") is None
    assert parse_retry_after(str(10**12 - 1)) == 300.0 and parse_retry_after(str(10**12)) is None
    for value, why in (("bytes 1-2", "not a byte Content-Range"), ("bytes 5-4/10", "first byte after last byte"),
                       ("bytes 0-10/10", "last byte beyond the total")):
        with pytest.raises(ValueError) as err:
            parse_content_range(value)
        assert str(err.value) == why, value
    assert redact("https:///v/f.dbc?sig=S") == "https:///v/f.dbc" and redact("https://[::1/x?sig=S") == "<unparseable url>"
