#!/usr/bin/python3
"""A pass-through FUSE filesystem whose fsyncs fail on demand, for tests/disk_faults.rs.

    faultfs.py BACKING MOUNTPOINT CONTROL

Everything under MOUNTPOINT is BACKING's. While the file CONTROL exists, every fsync,
fdatasync and directory fsync answers EIO and syncs nothing: a disk whose cache cannot
be flushed. Writes still land in BACKING's page cache, as they would on a real disk
whose flush failed. Runs in the foreground until unmounted. Needs Debian's python3-fusepy
(libfuse2) and /dev/fuse.
"""
import errno
import os
import sys

from fusepy import FUSE, FuseOSError, Operations


class FaultFs(Operations):
    def __init__(self, backing, control):
        self.backing = backing
        self.control = control

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def _sync_fails(self):
        return os.path.exists(self.control)

    # Metadata.
    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                "st_size", "st_uid", "st_blocks")
        return {k: getattr(st, k) for k in keys}

    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._path(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._path(path), times)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    # Directories.
    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        os.rmdir(self._path(path))

    def unlink(self, path):
        os.unlink(self._path(path))

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))

    def link(self, target, name):
        os.link(self._path(name), self._path(target))

    def symlink(self, name, target):
        os.symlink(target, self._path(name))

    def readlink(self, path):
        return os.readlink(self._path(path))

    def fsyncdir(self, path, datasync, fh):
        if self._sync_fails():
            raise FuseOSError(errno.EIO)
        fd = os.open(self._path(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    # Files.
    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is None:
            os.truncate(self._path(path), length)
        else:
            os.ftruncate(fh, length)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        if self._sync_fails():
            raise FuseOSError(errno.EIO)
        (os.fdatasync if datasync else os.fsync)(fh)
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: faultfs.py BACKING MOUNTPOINT CONTROL")
    backing, mountpoint, control = sys.argv[1:]
    FUSE(FaultFs(backing, control), mountpoint, foreground=True, nothreads=True,
         big_writes=True, max_write=1 << 20, default_permissions=True)


if __name__ == "__main__":
    main()
