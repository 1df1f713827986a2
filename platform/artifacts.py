"""A content-addressed artifact store: every stage's output under ``<root>/<stage>/<id>/``.

An artifact's id hashes the stage name, its config and its upstream artifact ids, so the
same inputs always name the same folder (DESIGN.md, "How data flows"). An artifact is
*complete* only when its ``manifest.json`` exists; the manifest is written last, after
the content is in place, so an interrupted stage never leaves something that passes
for finished. The root is a local folder or any ``pyarrow.fs`` URI (``s3://…``,
``gs://…``); content is assembled in a local staging folder and then moved (local) or
uploaded (remote) into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MANIFEST", "Artifact", "ArtifactStore", "artifact_id"]

MANIFEST = "manifest.json"


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
        return Path(self.uri)


class ArtifactStore:
    """Artifacts under ``root`` (a local folder or a ``pyarrow.fs`` URI)."""

    def __init__(self, root: str | os.PathLike):
        import pyarrow.fs

        root = str(root)
        self.local = "://" not in root
        if self.local:
            root = str(Path(root).expanduser().resolve())
            Path(root).mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.W_OK):
                raise PermissionError(f"artifact store {root} is not writable")
            self.fs, self.base = pyarrow.fs.LocalFileSystem(), root
        else:
            self.fs, self.base = pyarrow.fs.FileSystem.from_uri(root)
        self.root = root

    def uri(self, stage: str, id: str) -> str:
        return f"{self.root.rstrip('/')}/{stage}/{id}"

    def _path(self, stage: str, id: str, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), stage, id, *parts])

    def get(self, stage: str, id: str) -> Artifact | None:
        """The complete artifact ``id`` of ``stage``, or ``None`` (absent or unfinished)."""
        import pyarrow.fs

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
            raise PermissionError(f"artifact store {self.root} is not writable: {error}") from error

    def complete_ids(self, stage: str) -> set[str]:
        """The ids of the complete artifacts of ``stage`` (those with a manifest)."""
        import pyarrow.fs

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

    def _staging_parent(self, stage: str) -> str | None:
        if not self.local:
            return None
        parent = Path(self.base) / stage
        parent.mkdir(parents=True, exist_ok=True)
        return str(parent)  # same file system as the target, so the final move is a rename

    def publish(self, folder: Path, stage: str, id: str, manifest: Mapping) -> Artifact:
        """Move ``folder`` into place as artifact ``id`` and write its manifest last."""
        import pyarrow.fs

        target = self._path(stage, id)
        full = {"stage": stage, "id": id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **manifest}
        if self.local:
            if Path(target).exists():
                shutil.rmtree(target)  # an unfinished leftover (complete ones are never rebuilt)
            os.replace(folder, target)
            os.chmod(target, 0o755)  # mkdtemp made it 0700; artifacts are for everyone to read
            folder.mkdir()  # the caller's cleanup expects the staging folder to exist
            tmp = Path(target) / f".{MANIFEST}.tmp"
            tmp.write_text(json.dumps(full, indent=2, default=str))
            os.replace(tmp, Path(target) / MANIFEST)
        else:
            self.fs.delete_dir_contents(target, missing_dir_ok=True)
            pyarrow.fs.copy_files(
                str(folder),
                target,
                source_filesystem=pyarrow.fs.LocalFileSystem(),
                destination_filesystem=self.fs,
            )
            with self.fs.open_output_stream(self._path(stage, id, MANIFEST)) as f:
                f.write(json.dumps(full, indent=2, default=str).encode())
        return Artifact(stage=stage, id=id, uri=self.uri(stage, id), manifest=full)
