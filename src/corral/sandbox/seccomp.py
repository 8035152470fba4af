"""The sandbox's seccomp filter, compiled to BPF with libseccomp (via pyseccomp).

Default allow with a deny list: a coding agent needs the ordinary syscall surface
(compilers, package managers, interpreters), and what breaks containment is a short,
well-known list. Non-native architectures are killed by libseccomp's default
bad-arch action, which closes the classic 32-bit syscall-number bypass.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile

from corral.errors import SandboxUnavailable

# Denied outright with EPERM, and why.
DENIED_SYSCALLS: dict[str, str] = {
    "ptrace": "inspect or control other processes",
    "process_vm_readv": "read another process's memory",
    "process_vm_writev": "write another process's memory",
    "pidfd_getfd": "steal another process's file descriptors",
    "kcmp": "probe other processes' kernel objects",
    "bpf": "load kernel programs",
    "perf_event_open": "kernel profiling, a side channel and exploit surface",
    "userfaultfd": "stall the kernel, a common exploit primitive",
    "keyctl": "kernel keyrings are not namespaced",
    "add_key": "kernel keyrings are not namespaced",
    "request_key": "kernel keyrings are not namespaced",
    "mount": "change the filesystem view",
    "umount2": "change the filesystem view",
    "pivot_root": "change the filesystem view",
    "chroot": "change the filesystem view",
    "move_mount": "new mount API",
    "open_tree": "new mount API",
    "fsopen": "new mount API",
    "fsconfig": "new mount API",
    "fsmount": "new mount API",
    "fspick": "new mount API",
    "mount_setattr": "new mount API",
    "setns": "enter other namespaces",
    "unshare": "new namespaces (a new user namespace regains capabilities)",
    "kexec_load": "replace the kernel",
    "kexec_file_load": "replace the kernel",
    "init_module": "load kernel modules",
    "finit_module": "load kernel modules",
    "delete_module": "unload kernel modules",
    "io_uring_setup": "io_uring bypasses seccomp for the operations it performs",
    "io_uring_enter": "io_uring bypasses seccomp for the operations it performs",
    "io_uring_register": "io_uring bypasses seccomp for the operations it performs",
    "open_by_handle_at": "open files by handle, bypassing the mount view",
    "name_to_handle_at": "pairs with open_by_handle_at",
    "swapon": "host swap configuration",
    "swapoff": "host swap configuration",
    "reboot": "host power state",
    "acct": "host process accounting",
    "quotactl": "host quotas",
    "syslog": "kernel log reading",
    "settimeofday": "host clock",
    "clock_settime": "host clock",
    "clock_adjtime": "host clock",
    "adjtimex": "host clock",
    "iopl": "direct I/O port access",
    "ioperm": "direct I/O port access",
    "lookup_dcookie": "kernel profiling",
    "uselib": "obsolete loader path",
    "vhangup": "terminal takeover",
    "nfsservctl": "kernel NFS server",
}

# Namespace flags refused on clone(): NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET,
# NEWTIME. Each is its own rule because a rule's comparisons are ANDed, rules are ORed.
_CLONE_NS_FLAGS = (
    0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80,
)
_TIOCSTI = 0x5412  # push bytes into the terminal's input: a classic sandbox escape
_TIOCLINUX = 0x541C
_AF_PACKET = 17


@functools.cache
def filter_bytes() -> bytes:
    """The compiled BPF program (cached: it is the same for every sandbox)."""
    try:
        import pyseccomp as sc
    except OSError as exc:  # libseccomp.so missing
        raise SandboxUnavailable(f"libseccomp is not available: {exc}") from exc
    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        try:
            filt.add_rule(eperm, name)
        except ValueError:
            continue  # not a syscall on this architecture
    for flag in _CLONE_NS_FLAGS:
        filt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes flags in memory seccomp can't read: ENOSYS makes libc fall back to clone.
    filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for request in (_TIOCSTI, _TIOCLINUX):
        filt.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    filt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.EQ, _AF_PACKET))
    # Same uid is enough to change another process's limits, non-dumpable or not: the
    # supervisor's (NOFILE, CPU) must stay out of reach. glibc passes pid 0 for itself.
    filt.add_rule(eperm, "prlimit64", sc.Arg(0, sc.NE, 0))
    with tempfile.TemporaryFile() as fh:
        filt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


def filter_fd() -> int:
    """A readable fd holding the BPF program, for ``bwrap --seccomp FD``. Caller closes it."""
    data = filter_bytes()
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)  # a few hundred bytes: fits the pipe buffer
    finally:
        os.close(write_end)
    return read_end
