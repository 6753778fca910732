"""
Action C{file}: write the payload (or a C{data} template) into C{folder}
under the templated C{name}, atomically: temp file, fsync, rename.

The write runs in a thread so a slow disk never blocks the reactor.  A name
that would leave the folder (C{..}, absolute, NUL, a symlink out) fails the
action.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.errors import ActionError, ConfigIssue
from rawsvc.interfaces import IAction, IActionType
from rawsvc.template import Template

if TYPE_CHECKING:
    from rawsvc.context import BuildContext


def _mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ConfigIssue(f"must be an octal file mode such as \"0600\", not {value!r}") from None
    if not 0 <= mode <= 0o777:
        raise ConfigIssue(f"must be between 0000 and 0777, not {value!r}")
    return mode


def safe_path(folder: str, name: str) -> str:
    """
    Join C{name} under C{folder}, refusing anything that would land outside
    it.  Raises L{ActionError} naming the problem.
    """
    if not name:
        raise ActionError("file name is empty")
    if "\x00" in name:
        raise ActionError(f"file name {name!r} contains a NUL byte")
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise ActionError(f"file name {name!r} is absolute; it must stay inside {folder}")
    parts = name.replace("\\", "/").split("/")
    if any(p in ("..", "") for p in parts) or parts[-1] == ".":
        raise ActionError(f"file name {name!r} would leave the folder {folder}")
    base = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, target]) != base or target == base:
        raise ActionError(f"file name {name!r} resolves outside the folder {folder}")
    return target


def _makedirs_private(path: str) -> None:
    """
    C{os.makedirs} with mode 0700 for every folder it creates: since Python
    3.7 its C{mode} applies to the last folder only, and the ones above it
    get the umask's default (usually 0755).
    """
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs_private(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def _write_atomically(folder: str, name: str, source, mode: int, overwrite: bool) -> tuple[str, int]:
    path = safe_path(folder, name)  # before creating anything
    directory = os.path.dirname(path)
    try:
        _makedirs_private(folder)
        _makedirs_private(directory)
    except OSError as e:
        raise ActionError(f"cannot write {name!r} in {folder}: cannot create its folder: {e.strerror or e}") from None
    if not overwrite and os.path.exists(path):
        raise ActionError(f"file {name!r} already exists in {folder}")
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(source, bytes):
                f.write(source)
            else:
                with source() as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            size = f.tell()
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the name appeared meanwhile
            os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        os.unlink(tmp)
        raise ActionError(f"file {name!r} already exists in {folder}") from None
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ActionError(f"cannot write {name!r} in {folder}: {e.strerror or e}") from None
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path, size


@provider(IActionType)
@implementer(IAction)
class FileAction:
    """Archive a job to a folder."""

    type_name = "file"
    options = o.Schema(
        o.Option("folder", str, doc="the folder written to (created with mode 0700)"),
        o.Option("name", str, "${job_id}.prn", o.template,
                 doc="file name (template); one that would leave the folder (`..`, absolute, NUL, symlink) fails"),
        o.Option("data", str, "", o.optional_template, doc="template to write instead",
                 shown_default="the payload, streamed"),
        o.Option("encoding", str, "auto", o.encoding, doc="encoding of the rendered data"),
        o.Option("mode", str, "0600", _mode, doc="file mode, octal"),
        o.Option("overwrite", bool, True, doc="replace an existing file of that name"),
        o.Option("save_path", str, "", doc="variable that receives the written file's path", shown_default="—"),
    )

    def __init__(
        self,
        folder: str,
        name: Template,
        data: Template | None = None,
        encoding: str = "auto",
        mode: int = 0o600,
        overwrite: bool = True,
        save_path: str = "",
        reactor: Any = None,
    ) -> None:
        self.folder = folder
        self.name = name
        self.data = data
        self.encoding = encoding
        self.mode = mode
        self.overwrite = overwrite
        self.save_path = save_path
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "FileAction":
        if options["save_path"]:
            try:
                o.variable_name(options["save_path"])
            except ConfigIssue as e:
                raise ConfigIssue(e.message, "save_path") from None
        return cls(
            context.resolve_path(options["folder"]),
            options["name"],
            options["data"],
            options["encoding"],
            options["mode"],
            options["overwrite"],
            options["save_path"],
            reactor=context.reactor,
        )

    def run(self, job):
        name = self.name.render_text(job.variables)
        safe_path(self.folder, name)  # refuse a bad name before touching the disk
        if self.data is not None:
            source: Any = self.data.render(job.variables, self.encoding)
        elif job.payload.in_memory:
            source = job.payload.bytes()
        else:
            source = job.payload.open
        d = deferToThreadPool(
            self.reactor,
            self.reactor.getThreadPool(),
            _write_atomically,
            self.folder,
            name,
            source,
            self.mode,
            self.overwrite,
        )

        def saved(result: tuple[str, int]) -> None:
            path, _size = result
            if self.save_path:
                job.variables[self.save_path] = path

        return d.addCallback(saved)
