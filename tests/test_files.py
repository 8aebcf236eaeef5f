"""Writing files safely (``se_nas.design.files``): atomic writes never follow a link, leave no temporary file
behind on failure, keep the usual file mode; a filesystem error is one line naming the path. The full
disk and the read-only file system are real tmpfs mounts where this process may mount (root in a
container); elsewhere those tests are skipped."""
import errno
import os

import pytest

from se_nas.design.files import UnsafePathError, atomic_write, os_error_line


def test_a_link_at_the_old_temporary_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    for old_name in ("out.json.tmp", f".out.json.{os.getpid()}.tmp"):  # compare's and latency/train's old names
        (tmp_path / old_name).symlink_to(victim)
    atomic_write(tmp_path / "out.json", "{}")
    assert victim.read_text() == "keep me"
    assert (tmp_path / "out.json").read_text() == "{}" and not (tmp_path / "out.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["victim", "out.json", "out.json.tmp",
                                                                 f".out.json.{os.getpid()}.tmp"])


def test_a_link_at_the_target_is_refused_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "out.json").symlink_to(victim)
    with pytest.raises(UnsafePathError, match=r"'.*out.json' is a symbolic link .*victim"):
        atomic_write(tmp_path / "out.json", "{}")
    assert victim.read_text() == "keep me" and (tmp_path / "out.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "victim"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, b"x")


def test_the_file_gets_the_mode_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", b"x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == oct(0o640)


def test_a_full_disk_names_the_target_and_leaves_nothing(tmp_path, tmpfs):
    d = tmpfs(tmp_path / "small", fill=lambda d: (d / "out.bin").write_bytes(b"old"), full=True)
    with pytest.raises(OSError) as e:
        atomic_write(d / "out.bin", b"x" * 200_000)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(d / "out.bin")
    assert os_error_line(e.value) == f"{str(d / 'out.bin')!r}: disk full: free some space and rerun"
    assert sorted(p.name for p in d.iterdir()) == ["filler", "out.bin"] and (d / "out.bin").read_bytes() == b"old"


def test_os_error_lines():
    assert os_error_line(NotADirectoryError(errno.ENOTDIR, "Not a directory", "a/b")) == \
        "'a/b': a part of it is a file, not a folder"
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "x" * 500)).count("x") == 197
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")) == "disk full: free some space and rerun"
