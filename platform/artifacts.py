"""A content-addressed artifact store: every stage's output under ``<root>/<stage>/<id>/``.

An artifact's id hashes the stage name, its config and its upstream artifact ids, so the
same inputs always name the same folder (DESIGN.md, "How data flows"). An artifact is
*complete* only when its ``manifest.json`` exists; the manifest is written last, after
the content is in place, so an interrupted stage never leaves something that passes
for finished. The root is a local folder or any ``pyarrow.fs`` URI (``s3://…``,
``gs://…``); content is assembled in a staging folder and then moved (local) or
uploaded (remote) into place: a local folder on the driver for what the driver writes
(:meth:`ArtifactStore.build`), a folder on the store itself for what Ray workers on other
nodes write (:meth:`ArtifactStore.build_on_store`, e.g. the latent cache's Parquet shards).
Every file is read and written through the store's ``pyarrow.fs`` file system
(:func:`filesystem_for`), so a store on S3 works from every node of a cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs

__all__ = ["MANIFEST", "Artifact", "ArtifactStore", "artifact_id", "filesystem_for", "open_artifact"]

MANIFEST = "manifest.json"


def filesystem_for(uri: str | os.PathLike):
    """``(pyarrow.fs.FileSystem, path)`` of a local path (made absolute) or a URI
    (``s3://bucket/key``, ``file:///…``, ``gs://…``)."""
    uri = str(uri)
    if "://" in uri:
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def artifact_id(stage: str, config: Mapping, upstream: Sequence[str] = ()) -> str:
    """``<stage>-<12 hex>``: a hash of the stage, its config and its upstream ids (order matters)."""
    digest = hashlib.sha256(
        _canonical({"stage": stage, "config": config, "upstream": list(upstream)}).encode()
    )
    return f"{stage}-{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class Artifact:
    """A complete artifact: where it is and what its manifest says."""

    stage: str
    id: str
    uri: str
    manifest: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The local folder (only for a local store)."""
        if "://" in self.uri:
            raise ValueError(
                f"artifact {self.uri} is not on a local store: read it with ArtifactStore.read_bytes"
            )
        return Path(self.uri)


def open_artifact(uri: str | os.PathLike) -> Artifact:
    """The complete artifact at ``uri`` (its folder: a local path or ``s3://…/<stage>/<id>``),
    for command lines that take an artifact by location.

    :raises FileNotFoundError: no manifest there (not an artifact, or an unfinished one).
    """
    fs, path = filesystem_for(uri)
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/{MANIFEST}") as f:
            manifest = json.loads(f.read().decode())
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{uri} is not a complete artifact: it has no {MANIFEST}") from error
    location = str(uri) if "://" in str(uri) else path
    return Artifact(stage=manifest["stage"], id=manifest["id"], uri=location.rstrip("/"), manifest=manifest)


class ArtifactStore:
    """Artifacts under ``root`` (a local folder or a ``pyarrow.fs`` URI)."""

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        self.local = "://" not in root
        if self.local:
            root = str(Path(root).expanduser().resolve())
            try:
                Path(root).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise PermissionError(f"artifact store {root} cannot be created: {error}") from error
            if not os.access(root, os.W_OK):
                raise PermissionError(f"artifact store {root} is not writable")
            self.fs, self.base = pyarrow.fs.LocalFileSystem(), root
        else:
            self.fs, self.base = filesystem_for(root)
        self.root = root

    def uri(self, stage: str, id: str) -> str:
        return f"{self.root.rstrip('/')}/{stage}/{id}"

    def _path(self, stage: str, id: str, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), stage, id, *parts])

    def get(self, stage: str, id: str) -> Artifact | None:
        """The complete artifact ``id`` of ``stage``, or ``None`` (absent or unfinished)."""
        info = self.fs.get_file_info(self._path(stage, id, MANIFEST))
        if info.type != pyarrow.fs.FileType.File:
            return None
        with self.fs.open_input_stream(self._path(stage, id, MANIFEST)) as f:
            manifest = json.loads(f.read().decode())
        return Artifact(stage=stage, id=id, uri=self.uri(stage, id), manifest=manifest)

    def read_bytes(self, artifact: Artifact, name: str) -> bytes:
        """The bytes of file ``name`` inside ``artifact`` (local or remote store).

        :raises FileNotFoundError: no such file.
        """
        with self.fs.open_input_stream(self._path(artifact.stage, artifact.id, name)) as f:
            return f.read()

    def read_text(self, artifact: Artifact, name: str) -> str:
        """The text of file ``name`` inside ``artifact`` (local or remote store)."""
        return self.read_bytes(artifact, name).decode()

    def check_writable(self) -> None:
        """Write and delete a probe file under the root.

        :raises PermissionError: the store cannot be written (with the root in the message).
        """
        probe = f"{self.base.rstrip('/')}/.lolaray-write-probe-{os.getpid()}"
        try:
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except Exception as error:
            raise PermissionError(self._access_problem(error)) from error

    def _access_problem(self, error: Exception) -> str:
        """What went wrong reaching the store, in words a user can act on."""
        text = str(error)
        if self.local:
            return f"artifact store {self.root} is not writable: {text}"
        bucket = self.base.split("/", 1)[0]
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
            return f"artifact store {self.root}: the bucket {bucket!r} does not exist (create it, or fix --store)"
        if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not connect" in text:
            where = endpoint or "the default endpoint of its scheme"
            return f"artifact store {self.root}: cannot reach {where} (check the network, or AWS_ENDPOINT_URL): {text}"
        if "ACCESS_DENIED" in text or "AccessDenied" in text or "credentials" in text.lower():
            return (
                f"artifact store {self.root}: access denied — no credentials with write access to bucket "
                f"{bucket!r} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role): {text}"
            )
        return f"artifact store {self.root} is not writable: {text}"

    def complete_ids(self, stage: str) -> set[str]:
        """The ids of the complete artifacts of ``stage`` (those with a manifest)."""
        selector = pyarrow.fs.FileSelector(f"{self.base.rstrip('/')}/{stage}", allow_not_found=True)
        folders = [i for i in self.fs.get_file_info(selector) if i.type == pyarrow.fs.FileType.Directory]
        manifests = self.fs.get_file_info([f"{i.path}/{MANIFEST}" for i in folders])
        return {i.path.rstrip("/").split("/")[-2] for i in manifests if i.type == pyarrow.fs.FileType.File}

    @contextmanager
    def build(self, stage: str, id: str, manifest: Mapping | None = None) -> Iterator[Path]:
        """Stage a new artifact: yields a local folder to fill; on success it is published.

        Publishing moves (or uploads) the folder into place, replacing an unfinished
        leftover, and writes ``manifest.json`` last. On an exception nothing is published.
        The caller may add entries to ``manifest`` inside the ``with`` block.
        """
        manifest = manifest if manifest is not None else {}
        staging = Path(tempfile.mkdtemp(prefix=f".{id}-", dir=self._staging_parent(stage)))
        try:
            yield staging
            self.publish(staging, stage, id, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def build_on_store(self, stage: str, id: str, manifest: Mapping | None = None) -> Iterator[str]:
        """Like :meth:`build`, but the staging folder is on the store itself and is yielded as
        a URI (a path for a local store): for content written by Ray workers, which may run
        on other nodes. Write through :func:`filesystem_for`."""
        manifest = manifest if manifest is not None else {}
        staging = f"{self.base.rstrip('/')}/{stage}/.{id}-{uuid.uuid4().hex[:12]}"
        self.fs.create_dir(staging, recursive=True)
        uri = staging if self.local else f"{self.root.split('://', 1)[0]}://{staging}"
        try:
            yield uri
            if self.local:
                self.publish(Path(staging), stage, id, manifest)
            else:
                self._publish_remote(staging, self.fs, stage, id, manifest)
        finally:
            if self.fs.get_file_info(staging).type != pyarrow.fs.FileType.NotFound:
                self.fs.delete_dir(staging)

    def _staging_parent(self, stage: str) -> str | None:
        if not self.local:
            return None
        parent = Path(self.base) / stage
        parent.mkdir(parents=True, exist_ok=True)
        return str(parent)  # same file system as the target, so the final move is a rename

    def publish(self, folder: Path, stage: str, id: str, manifest: Mapping) -> Artifact:
        """Move ``folder`` into place as artifact ``id``, complete with its manifest (local:
        one rename; remote: the manifest uploaded last). If another process published the
        same artifact first, that one is returned and ``folder`` is left to the caller."""
        target = self._path(stage, id)
        full = {"stage": stage, "id": id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **manifest}
        if self.local:
            if (done := self.get(stage, id)) is not None:
                return done  # a concurrent study finished it first: same inputs, same content
            # The manifest goes in before the folder is renamed into place, so the rename
            # publishes content and manifest at once: never a half-visible artifact.
            (folder / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
            os.chmod(folder, 0o755)  # mkdtemp made it 0700; artifacts are for everyone to read
            if Path(target).exists() and not (Path(target) / MANIFEST).exists():
                shutil.rmtree(target, ignore_errors=True)  # an unfinished leftover of a crash
            try:
                os.replace(folder, target)
            except OSError:
                if (done := self.get(stage, id)) is not None:
                    return done  # renamed into place by a concurrent study between the checks
                raise
            folder.mkdir()  # the caller's cleanup expects the staging folder to exist
        else:
            return self._publish_remote(str(folder), pyarrow.fs.LocalFileSystem(), stage, id, manifest)
        return Artifact(stage=stage, id=id, uri=self.uri(stage, id), manifest=full)

    def _publish_remote(self, source: str, source_fs, stage: str, id: str, manifest: Mapping) -> Artifact:
        """Uploads (or copies, within the store) ``source`` to artifact ``id``; manifest last.
        An object store has no atomic folder rename: a study that finished the same artifact
        first keeps it (content-addressed, so it holds the same thing)."""
        if (done := self.get(stage, id)) is not None:
            return done
        target = self._path(stage, id)
        full = {"stage": stage, "id": id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **manifest}
        self.fs.delete_dir_contents(target, missing_dir_ok=True)  # an unfinished leftover
        pyarrow.fs.copy_files(source, target, source_filesystem=source_fs, destination_filesystem=self.fs)
        with self.fs.open_output_stream(self._path(stage, id, MANIFEST)) as f:
            f.write(json.dumps(full, indent=2, default=str).encode())
        return Artifact(stage=stage, id=id, uri=self.uri(stage, id), manifest=full)
