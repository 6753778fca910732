"""Payload files of the spool: private (0600), fsynced, their folder fsynced at commit."""

from __future__ import annotations

import errno
import os
import shutil


def write_file(source: bytes | str, target: str) -> None:
    """
    The payload (bytes, or the path of a spilled payload, hard-linked when
    possible) into C{target}, 0600, fsynced.  The caller fsyncs the folder.
    """
    if isinstance(source, bytes):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(source)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            unlink(target)
            raise
        os.close(fd)
        return
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
            raise
        try:
            shutil.copyfile(source, target)
        except BaseException:  # a full disk: no partial copy left behind
            unlink(target)
            raise
    try:
        os.chmod(target, 0o600)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink(target)
        raise


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def payload_file(files_dir: str, path: str) -> str:
    """
    A stored payload path, found again in C{files_dir} by its name when the
    state_dir has moved since (a salvaged spool put in place).
    """
    if os.path.exists(path):
        return path
    moved = os.path.join(files_dir, os.path.basename(path))
    return moved if os.path.exists(moved) else path
