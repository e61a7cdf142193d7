#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""sendzc: Linux io_uring zero-copy send from raw syscalls, measured and explained.

    sudo python3 sendzc.py                  the whole comparison, on a private sink
    python3 sendzc.py -4 -D 10.0.0.2 udp    send to a receiver on another box ...
    python3 sendzc.py rx udp                ... which runs this, and checks every byte
    python3 sendzc.py --probe               what this kernel's io_uring offers
    python3 sendzc.py --first-send          one zero-copy send explained, then in bulk

This file is also a tutorial. It drives io_uring with nothing but the three
system calls and shared memory, the way liburing does in C, and it is meant to
be read from top to bottom. Part I, sections 1 to 7, teaches io_uring; Part
II, sections 8 to 12, is the tool built on it; nothing in Part I calls into Part II:

  1. Kernel ABI        constants and structs transcribed from <linux/io_uring.h>
  2. System calls      io_uring_setup, io_uring_enter, io_uring_register
  3. The ring          mapping the shared rings; who owns which index
  4. Submit, reap      placing SQEs and judging CQEs, one by one and in bulk
  5. Preparing SQEs    the io_uring_prep_* helpers of liburing
  6. One CQE at a time a zero-copy sender over a pool of buffers, every CQE judged
  7. Run it           one SEND_ZC and its two CQEs judged; then the same in bulk
  8. The senders       the fast sender (section 7's bulk send made fast), and
                       around it the tool's: payload, results, sockets, flows,
                       failures
  9. The receiver      rx: counts and verifies what a sender sends
 10. The benchmark     the private sink and the table of every way to send
 11. Failures          the one line for each refusal and fault, and what it looks at
 12. Command line      options, --probe, signals, main()

A zero-copy send in one paragraph: the application puts a submission queue
entry (SQE) saying "send these bytes on this socket" into a ring it shares
with the kernel and calls io_uring_enter(). The kernel builds packets that
point at the application's own pages instead of copying them, and posts two
completion queue entries (CQEs): the *result* (bytes sent, with
IORING_CQE_F_MORE set to say another CQE will follow) and, once the network
stack has let go of the pages, the *notification* (IORING_CQE_F_NOTIF). Only
then may the buffer change. Everything below serves that sentence.

"The seed", throughout: the standalone benchmark send-zc.c that Pavel
Begunkov posted on 1 December 2021 in the thread of his "[RFC 00/12]
io_uring zerocopy send" series, which became IORING_OP_SEND_ZC. sendzc grew from it and keeps its
options, its defaults and its output line.
"""

# The Python floor, checked before anything that could fail on an older one:
# 3.6 to 3.8 stop in this one line. (3.5 and 2.7 cannot compile the f-strings
# below, so they stop with a SyntaxError before any line runs.)
import sys
if sys.version_info < (3, 9):
    sys.stderr.write("sendzc: this is Python %d.%d.%d; sendzc needs 3.9 or newer: run it with "
                     "python3.9 or a later python3\n" % tuple(sys.version_info[:3]))
    sys.exit(1)

import signal

# A signal before main() has installed its handlers (the imports and setup
# below take ~50 ms) must not end in a traceback: the first is noted, and
# main() ends the run before it begins, as it ends every run (section 12); a
# second one ends it at once. Imported (by the tests), the importer keeps its handlers.
EARLY_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_early_signals = []


def _signal_before_main(signum, frame):
    """A stop signal before main() began: note it for main(); a second one exits (130, 128+N)."""
    if not _early_signals:
        _early_signals.append(signum)
        return
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    sys.stderr.write(f"sendzc: interrupted ({name}) while starting: nothing was sent\n")
    raise SystemExit(130 if signum == signal.SIGINT else 128 + signum)


if __name__ == "__main__":
    for _signum in EARLY_SIGNALS:
        signal.signal(_signum, _signal_before_main)

import argparse
import collections
import ctypes
import errno
import functools
import json
import linecache
import math
import mmap
import os
import platform
import re
import resource
import select
import shlex
import shutil
import socket
import struct
import subprocess
import threading
import time
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterator, List, Optional, Tuple
from xml.sax.saxutils import escape, quoteattr

VERSION = "0.1.0"

# =============================================================================
# 1. Kernel ABI
#
# io_uring's interface is memory shared with the kernel plus three syscalls.
# The layout of that memory is ABI: the names and numbers below are copied
# from <linux/io_uring.h> (kernel 6.18) and must never be guessed. Each opcode
# and flag is tagged with the kernel release that brought it, because on an
# older kernel it is simply absent: setup answers EINVAL, an SQE answers
# -EINVAL in its CQE (IORING_REGISTER_PROBE asks which are there: section 8).
# =============================================================================

# --- io_uring_setup() flags: io_uring_params.flags --------------------------
# Two words they use. A request often completes where the kernel cannot post
# its CQE (in an interrupt, on another CPU): it queues the rest as *task
# work*, to run in the submitting task's own context. To make that task run
# it at once, the kernel interrupts the CPU the task is on: an *IPI*
# (inter-processor interrupt). COOP_TASKRUN skips the IPI: the work waits
# until the task next enters the kernel. DEFER_TASKRUN waits longer: only
# an io_uring_enter() that waits for CQEs (GETEVENTS) runs it.
IORING_SETUP_SQPOLL = 1 << 1          # 5.1  a kernel thread polls the SQ
IORING_SETUP_CQSIZE = 1 << 3          # 5.5  io_uring_params.cq_entries is ours
IORING_SETUP_COOP_TASKRUN = 1 << 8    # 5.19 task work without an IPI
IORING_SETUP_SINGLE_ISSUER = 1 << 12  # 6.0  only one task submits
IORING_SETUP_DEFER_TASKRUN = 1 << 13  # 6.1  task work runs only in io_uring_enter(GETEVENTS)
IORING_SETUP_NO_SQARRAY = 1 << 16     # 6.6  no SQ index array: slot i is SQE i

# --- enum io_uring_op: the opcodes this file uses, by the release that added them
IORING_OP_NOP = 0           # 5.1
IORING_OP_SENDMSG = 9       # 5.3
IORING_OP_SEND = 26         # 5.6
IORING_OP_RECV = 27         # 5.6
IORING_OP_SEND_ZC = 47      # 6.0  (the 2021 RFC's opcode 40 is IORING_OP_MSG_RING today)
IORING_OP_SENDMSG_ZC = 48   # 6.1

# --- io_uring_sqe.flags: IOSQE_* -------------------------------------------
IOSQE_FIXED_FILE = 1 << 0   # sqe.fd is an index into the registered file table
IOSQE_IO_LINK = 1 << 2      # the next SQE starts only after this one completes

# --- send flags, in io_uring_sqe.ioprio for SEND/SENDMSG and their _ZC forms
IORING_RECVSEND_POLL_FIRST = 1 << 0
IORING_RECVSEND_FIXED_BUF = 1 << 2     # 6.0  sqe.buf_index names a registered buffer
IORING_SEND_ZC_REPORT_USAGE = 1 << 3   # 6.2  notification res says whether it avoided the copy
# cqe.res of a notification when REPORT_USAGE was asked: "a flag, all other
# bits reserved". Bit 31 of a signed 32-bit res: it reads as a negative number.
IORING_NOTIF_USAGE_ZC_COPIED = 1 << 31
NOTIF_COPIED_RES = -(1 << 31)          # ... that is, such a notification's res as read: s32

# --- io_uring_cqe.flags: IORING_CQE_F_* --------------------------------------
IORING_CQE_F_BUFFER = 1 << 0
IORING_CQE_F_MORE = 1 << 1           # another CQE for this request will follow
IORING_CQE_F_SOCK_NONEMPTY = 1 << 2
IORING_CQE_F_NOTIF = 1 << 3          # this CQE is a zero-copy notification


# Each flag test as a tiny named function, as tokio-rs io-uring's cqueue::more()
# and notif() are: the reference sender (section 6) reads `if notif(flags)`.
def more(flags: int) -> bool:
    """F_MORE: this request will post another CQE (a zero-copy send's notification).

    A result without it owes no notification: the kernel refused the send
    before it took the pages. Both CQEs of a request carry its user_data.
    """
    return bool(flags & IORING_CQE_F_MORE)


def notif(flags: int) -> bool:
    """F_NOTIF: a notification: the kernel has let go of the request's buffer."""
    return bool(flags & IORING_CQE_F_NOTIF)


def copied(res: int) -> bool:
    """A notification's res with IORING_NOTIF_USAGE_ZC_COPIED: the send was not zero-copy.

    The kernel copied, or never used the pages at all: a send that failed, or
    whose bytes all went by copy (a fragmented datagram), sets it too
    (io_notif_tw_complete(): zc_copied || !zc_used).
    """
    return bool(res & IORING_NOTIF_USAGE_ZC_COPIED)


# --- mmap offsets of the three regions --------------------------------------
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000     # unused here: with SINGLE_MMAP the CQ ring lies in the SQ ring's mapping
IORING_OFF_SQES = 0x10000000

# --- sq_ring flags (the word at sq_off.flags, written by the kernel) ---------
IORING_SQ_NEED_WAKEUP = 1 << 0   # SQPOLL thread sleeps: io_uring_enter must wake it
IORING_SQ_CQ_OVERFLOW = 1 << 1   # CQEs are held back for want of room in the CQ ring

# --- io_uring_enter() flags ---------------------------------------------------
IORING_ENTER_GETEVENTS = 1 << 0       # wait for min_complete CQEs
IORING_ENTER_SQ_WAKEUP = 1 << 1       # wake the SQPOLL thread (when it asked: NEED_WAKEUP)
IORING_ENTER_EXT_ARG = 1 << 3         # 5.11 arg is struct io_uring_getevents_arg
IORING_ENTER_REGISTERED_RING = 1 << 4  # 5.18 fd is a registered ring index

# --- io_uring_params.features: IORING_FEAT_*, the ones this file relies on
# (--probe reports the others: section 12)
IORING_FEAT_SINGLE_MMAP = 1 << 0     # 5.4  one mapping for both rings
IORING_FEAT_NODROP = 1 << 1          # 5.5  a CQE without room is held back, not dropped
IORING_FEAT_EXT_ARG = 1 << 8         # 5.11 io_uring_enter takes a timeout
# What Ring requires of every kernel (see Ring._setup: we do not support older ones).
REQUIRED_FEATURES = IORING_FEAT_SINGLE_MMAP | IORING_FEAT_EXT_ARG

# --- enum io_uring_register_op -----------------------------------------------
IORING_REGISTER_BUFFERS = 0
IORING_UNREGISTER_BUFFERS = 1
IORING_REGISTER_FILES = 2
IORING_UNREGISTER_FILES = 3
IORING_REGISTER_RING_FDS = 20      # 5.18
IORING_UNREGISTER_RING_FDS = 21



def _names(prefix: str) -> Dict[int, str]:
    """Value -> name for every constant above that starts with prefix."""
    return {v: k for k, v in globals().items() if k.startswith(prefix) and isinstance(v, int)}


OPCODE_NAMES = _names("IORING_OP_")
CQE_FLAG_NAMES = _names("IORING_CQE_F_")
FEAT_NAMES = _names("IORING_FEAT_")
SETUP_NAMES = _names("IORING_SETUP_")
SQE_FLAG_NAMES = _names("IOSQE_")
SEND_FLAG_NAMES = {**_names("IORING_RECVSEND_"), **_names("IORING_SEND_")}


def flag_names(value: int, names: Dict[int, str], strip: str = "") -> str:
    """'A|B' for the bits of value that have names; leftover bits in hex; '0' for none."""
    parts = [names[bit].replace(strip, "") for bit in sorted(names) if value & bit]
    rest = value & ~sum(bit for bit in names if value & bit)
    return "|".join(parts + ([hex(rest)] if rest else [])) or "0"

# --- The structs, field by field as the header declares them -----------------
u8, u16, u32, s32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64


class io_sqring_offsets(ctypes.Structure):
    """Where each SQ ring word lives inside the SQ mapping (byte offsets)."""
    _fields_ = [("head", u32), ("tail", u32), ("ring_mask", u32), ("ring_entries", u32),
                ("flags", u32), ("dropped", u32), ("array", u32), ("resv1", u32),
                ("user_addr", u64)]


class io_cqring_offsets(ctypes.Structure):
    """Where each CQ ring word, and the CQE array, live inside the CQ mapping."""
    _fields_ = [("head", u32), ("tail", u32), ("ring_mask", u32), ("ring_entries", u32),
                ("overflow", u32), ("cqes", u32), ("flags", u32), ("resv1", u32),
                ("user_addr", u64)]


class io_uring_params(ctypes.Structure):
    """Passed to io_uring_setup(); the kernel writes back sizes, features, offsets."""
    _fields_ = [("sq_entries", u32), ("cq_entries", u32), ("flags", u32),
                ("sq_thread_cpu", u32), ("sq_thread_idle", u32), ("features", u32),
                ("wq_fd", u32), ("resv", u32 * 3),
                ("sq_off", io_sqring_offsets), ("cq_off", io_cqring_offsets)]


# struct io_uring_sqe is 64 bytes of unions: each opcode reads the same bytes
# under its own names. The anonymous unions are declared as ctypes unions so
# that sqe.msg_flags and sqe.rw_flags are the same four bytes, as in C.
class _sqe_off(ctypes.Union):
    class _cmd(ctypes.Structure):
        _fields_ = [("cmd_op", u32), ("__pad1", u32)]
    _anonymous_ = ("_c",)
    _fields_ = [("off", u64), ("addr2", u64), ("_c", _cmd)]


class _sqe_addr(ctypes.Union):
    class _sockopt(ctypes.Structure):
        _fields_ = [("level", u32), ("optname", u32)]
    _anonymous_ = ("_s",)
    _fields_ = [("addr", u64), ("splice_off_in", u64), ("_s", _sockopt)]


class _sqe_op_flags(ctypes.Union):
    # One u32 that every opcode names for itself; SEND reads msg_flags.
    _fields_ = [("rw_flags", ctypes.c_int32), ("poll_events", u16)] + [(n, u32) for n in (
        "fsync_flags", "poll32_events", "sync_range_flags", "msg_flags", "timeout_flags",
        "accept_flags", "cancel_flags", "open_flags", "statx_flags", "fadvise_advice",
        "splice_flags", "rename_flags", "unlink_flags", "hardlink_flags", "xattr_flags",
        "msg_ring_flags", "uring_cmd_flags", "waitid_flags", "futex_flags",
        "install_fd_flags", "nop_flags", "pipe_flags")]


class _sqe_buf(ctypes.Union):
    _pack_ = 1   # the header packs it "to avoid bogus arm OABI complaints"
    _fields_ = [("buf_index", u16), ("buf_group", u16)]


class _sqe_file(ctypes.Union):
    class _addr_len(ctypes.Structure):
        _fields_ = [("addr_len", u16), ("__pad3", u16 * 1)]
    _anonymous_ = ("_a",)
    _fields_ = [("splice_fd_in", s32), ("file_index", u32), ("zcrx_ifq_idx", u32),
                ("optlen", u32), ("_a", _addr_len)]


class _sqe_tail(ctypes.Union):
    class _addr3(ctypes.Structure):
        _fields_ = [("addr3", u64), ("__pad2", u64 * 1)]

    class _attr(ctypes.Structure):
        _fields_ = [("attr_ptr", u64), ("attr_type_mask", u64)]
    _anonymous_ = ("_a3", "_at")
    _fields_ = [("_a3", _addr3), ("_at", _attr), ("optval", u64), ("cmd", u8 * 0)]


class io_uring_sqe(ctypes.Structure):
    """Submission queue entry: one request, 64 bytes."""
    _anonymous_ = ("_off", "_addr", "_opf", "_buf", "_file", "_tail")
    _fields_ = [("opcode", u8), ("flags", u8), ("ioprio", u16), ("fd", s32),
                ("_off", _sqe_off), ("_addr", _sqe_addr), ("len", u32),
                ("_opf", _sqe_op_flags), ("user_data", u64), ("_buf", _sqe_buf),
                ("personality", u16), ("_file", _sqe_file), ("_tail", _sqe_tail)]


class io_uring_cqe(ctypes.Structure):
    """Completion queue entry: user_data handed back, res (bytes or -errno), flags."""
    _fields_ = [("user_data", u64), ("res", s32), ("flags", u32), ("big_cqe", u64 * 0)]


class io_uring_rsrc_update(ctypes.Structure):
    """Argument of IORING_REGISTER_RING_FDS: offset -1 lets the kernel pick a slot."""
    _fields_ = [("offset", u32), ("resv", u32), ("data", u64)]


class io_uring_getevents_arg(ctypes.Structure):
    """IORING_ENTER_EXT_ARG's argument: here only for a timeout on waiting."""
    _fields_ = [("sigmask", u64), ("sigmask_sz", u32), ("min_wait_usec", u32), ("ts", u64)]


class kernel_timespec(ctypes.Structure):
    """struct __kernel_timespec (renamed: Python mangles a leading __ inside classes)."""
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


# A plain socket struct, from <sys/uio.h>: what registered buffers are described by.
class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _check_layout():
    """Fail at import, loudly, if a declaration above drifted from the kernel's."""
    sizes = {io_sqring_offsets: 40, io_cqring_offsets: 40, io_uring_params: 120,
             io_uring_sqe: 64, io_uring_cqe: 16,
             io_uring_rsrc_update: 16, io_uring_getevents_arg: 24, kernel_timespec: 16,
             iovec: 16}
    for struct_type, size in sizes.items():
        assert ctypes.sizeof(struct_type) == size, (struct_type.__name__, ctypes.sizeof(struct_type))
    offsets = {io_uring_sqe: dict(opcode=0, flags=1, ioprio=2, fd=4, off=8, addr=16, len=24,
                                  msg_flags=28, user_data=32, buf_index=40, personality=42,
                                  file_index=44, addr3=48),
               io_uring_cqe: dict(user_data=0, res=8, flags=12),
               io_uring_params: dict(features=20, sq_off=40, cq_off=80)}
    for struct_type, fields in offsets.items():
        for name, want in fields.items():
            # ctypes lifts the fields of an anonymous union into the outer
            # struct, with their offsets, just as C does.
            assert getattr(struct_type, name).offset == want, (struct_type.__name__, name)


_check_layout()
# Sizes the ring arithmetic uses, from the structs rather than retyped: a ring
# word (head, tail, ...) is a u32, and slot i of the SQE array starts at byte
# i << SQE_SHIFT.
U32_SIZE = ctypes.sizeof(u32)
SQE_SIZE = ctypes.sizeof(io_uring_sqe)
SQE_SHIFT = SQE_SIZE.bit_length() - 1
assert 1 << SQE_SHIFT == SQE_SIZE
CQE_SIZE = ctypes.sizeof(io_uring_cqe)
CQE_SHIFT = CQE_SIZE.bit_length() - 1   # and CQE i at byte i << CQE_SHIFT of the CQE array
assert 1 << CQE_SHIFT == CQE_SIZE

U32 = 0xFFFFFFFF    # ring indices are u32 and wrap at 2**32
PAGE = mmap.PAGESIZE
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0x8000)       # <sys/mman.h>; mmap has it from 3.10


# =============================================================================
# 2. System calls
#
# glibc has no wrappers for the io_uring syscalls, so, like liburing's
# syscall.h, we call syscall(2) with their numbers (one number on every
# architecture but alpha since 5.1; we name the two we support). An error
# becomes an OSError that names the syscall (OSError(EINTR, ...) is an
# InterruptedError, which the wait loops catch), and a refusal the user must
# act on becomes Fatal: one line, naming the fix. Past this section only the
# once-per-batch paths call syscall() themselves, to save a Python frame
# (Ring.submit_and_peek through _syscall; section 8's hot loop through one that
# keeps the GIL); every io_uring_enter's answer goes through check_enter() all
# the same.
# =============================================================================

_NR_IO_URING = {  # machine: (io_uring_setup, io_uring_enter, io_uring_register)
    "x86_64": (425, 426, 427),    # arch/x86/entry/syscalls/syscall_64.tbl
    "aarch64": (425, 426, 427),   # include/uapi/asm-generic/unistd.h
}
NR_io_uring_setup, NR_io_uring_enter, NR_io_uring_register = _NR_IO_URING.get(
    platform.machine(), (None, None, None))
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# No argtypes, on purpose: converting through them costs ~0.7 us a call, more
# than the rest of a batch's Python. Without them a Python int goes as a C
# int, which libffi sign-extends to a full register on x86-64 and arm64; a
# pointer goes as ctypes.byref() or None. The trap: syscall()'s 7th argument
# (io_uring_enter's argsz) travels on the *stack* on x86-64, where libffi
# writes only 4 bytes of the 8-byte slot the kernel reads as a size_t; so
# that argument is always a ctypes.c_size_t.
_SIZE_0 = ctypes.c_size_t(0)


class Fatal(Exception):
    """One line for the user: what failed and how to fix it; and the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def syscall_error(call: str, err: int) -> OSError:
    """The OSError for errno err from call, naming the call (main()'s one line reads e.syscall)."""
    e = OSError(err, f"{call}: {errno.errorcode.get(err, err)}: {os.strerror(err)}")
    e.syscall = call
    return e


def _raise_errno(call: str) -> None:
    raise syscall_error(call, ctypes.get_errno())


def check_enter(ret: int) -> int:
    """io_uring_enter's answer: ret, the SQEs it consumed; or the OSError naming it and its errno.

    Every io_uring_enter in this file is judged here, the hot loop's too.
    """
    if ret < 0:
        _raise_errno("io_uring_enter")
    return ret


def io_uring_setup(entries: int, params: io_uring_params) -> int:
    """io_uring_setup(2): make a ring; returns its fd and fills params.

    EINVAL  a flag this kernel does not know (or bad sizes)
    EPERM   io_uring disabled (sysctl kernel.io_uring_disabled) or blocked by seccomp
    ENOSYS  kernel built without io_uring, or a filter pretending so
    ENOMEM  out of memory; or, for a user without CAP_IPC_LOCK, the rings pass RLIMIT_MEMLOCK
            (before 5.12, and again since 6.14, whose io_create_region() counts their pages;
            5.12 to 6.13 charge them to the memory cgroup instead)
    EMFILE  out of file descriptors
    """
    if NR_io_uring_setup is None:
        raise Fatal(f"sendzc knows the io_uring syscall numbers of x86_64 and aarch64, "
                    f"not of {platform.machine()}: run it on one of those")
    ret = _syscall(NR_io_uring_setup, entries, ctypes.byref(params))
    if ret < 0:
        _raise_errno("io_uring_setup")
    return ret


def io_uring_enter(fd: int, to_submit: int, min_complete: int, flags: int,
                   arg=None, argsz: ctypes.c_size_t = _SIZE_0) -> int:
    """io_uring_enter(2): submit to_submit SQEs, then wait for min_complete CQEs.

    Returns how many SQEs the kernel consumed. The errnos (io_uring_enter.2):
    EINTR   a signal arrived while waiting: nothing lost, call again
    EAGAIN  the kernel could not allocate for a request: reap, retry
    EBUSY   CQ overflow entries could not be flushed: reap, retry
    ETIME   the EXT_ARG timeout passed before min_complete CQEs came
    EBADR   CQEs were dropped even with IORING_FEAT_NODROP (no memory to hold the overflow)
    EFAULT  an argument points outside our memory
    """
    return check_enter(_syscall(NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz))


def io_uring_register(fd: int, opcode: int, arg, nr_args: int) -> int:
    """io_uring_register(2): register buffers, files, ring fds; or probe.

    ENOMEM  pinning buffers exceeds RLIMIT_MEMLOCK (non-root) or memory
    EINVAL  an opcode or argument this kernel does not accept
    EBUSY   buffers or files are already registered
    EFAULT  a buffer address is not mapped
    """
    ret = _syscall(NR_io_uring_register, fd, opcode, arg, nr_args)
    if ret < 0:
        _raise_errno("io_uring_register")
    return ret


def _addr_of(buf) -> int:
    """The address of a writable buffer (an mmap): what the kernel is told to read."""
    anchor = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor      # it holds an export on buf, which would keep buf from closing


# =============================================================================
# 3. The ring
#
# io_uring_setup() makes three regions that we mmap from the ring fd:
#
#   SQ ring  head, tail, mask, flags, and (unless NO_SQARRAY) an index array
#   CQ ring  head, tail, mask, overflow, flags, and the CQE array itself
#   SQEs     the array of 64-byte submission entries
#
# (The two rings share one mapping, IORING_FEAT_SINGLE_MMAP, which Ring
# requires; it keeps a name for each so every field is read through its own.)
#
# Who writes which word, and so who may cache it:
#
#   sq.tail   we     (the kernel reads it inside io_uring_enter; with SQPOLL
#                     its thread reads it at any time: section 4)
#   sq.head   kernel (advances as it consumes SQEs; we read it for free space)
#   cq.tail   kernel (advances as it posts CQEs; we read it to reap)
#   cq.head   we     (tells the kernel which CQE slots are free again)
#   sq.flags, cq.overflow    kernel (NEED_WAKEUP, CQ_OVERFLOW; CQEs it dropped)
#   SQE slots from sq.head to sq.tail    the kernel's to read until sq.head passes
#   CQE slots from cq.head to cq.tail    ours to read until we move cq.head
#
# Head and tail are free-running u32 counters, never reset: the slot of
# counter c is c & ring_mask, and the entries between them number
# (tail - head) & 0xffffffff, which stays right when tail has wrapped past
# 2**32 and head has not. Everything below masks and says so.
#
# Memory ordering. C pairs a release store of sq.tail with the kernel's
# acquire load, and an acquire load of cq.tail with the kernel's release
# store. CPython offers no fences, so we rest on the design instead:
#  - Without SQPOLL, the kernel reads sq.tail only inside io_uring_enter(),
#    which this thread calls after writing the SQEs and the tail: program
#    order makes the stores visible (liburing's store is plain here too).
#  - With IORING_SETUP_DEFER_TASKRUN every CQE is posted on behalf of this
#    thread, inside its own io_uring_enter(): when the call returns, the
#    CQEs and cq.tail are this thread's own earlier writes. Without it
#    (kernels before 6.1, and every SQPOLL ring), CQEs may be posted from
#    another CPU: x86-64 keeps loads in order (TSO), so reading cq.tail before
#    the CQEs suffices; on arm64 a kernel before 6.1 is the one case left to
#    luck (SQPOLL is refused there, section 8).
#  - cq.head, our release in C: with DEFER_TASKRUN the kernel writes CQE
#    slots only inside our own enter, after our reads of them are done.
#  - Each ring word is an aligned u32 read or written through a
#    memoryview cast("I"): one machine load or store, never torn (what C's
#    READ_ONCE and WRITE_ONCE ask for).
# =============================================================================

# The longest one io_uring_enter() of a send loop waits before it comes back
# to look at the clock and at Ctrl-C: a send the kernel never completes (a TCP
# peer that stopped reading) must not hold the run past its deadline.
ENTER_WAIT_NS = 100_000_000


class SubmissionQueueFull(Exception):
    """More SQEs than free SQ slots: a bug in the caller, named as Zig's IoUring does."""


class Ring:
    """An io_uring instance: its fd, its mappings, and our copies of the indices we own.

    Like liburing's struct io_uring; __init__ is io_uring_queue_init_params()
    and close() is io_uring_queue_exit(). Use it as a context manager.
    attempts: setup flags to add to flags, tried in turn, best first: EINVAL
    from io_uring_setup means "a flag I do not know", so the next set is
    tried, as liburing's callers do by hand (the tool's ladders: section 8).
    """

    def __init__(self, entries: int, cq_entries: int = 0, flags: int = 0,
                 attempts: Tuple[int, ...] = (0,), sq_thread_idle: int = 0):
        self._stack = ExitStack()
        try:
            self._setup(entries, cq_entries, flags, attempts, sq_thread_idle)
        except BaseException:
            self._stack.close()
            raise

    def _setup(self, entries, cq_entries, flags, attempts, sq_thread_idle):
        for extra in attempts:
            p = io_uring_params(flags=flags | extra | (IORING_SETUP_CQSIZE if cq_entries else 0),
                                cq_entries=cq_entries, sq_thread_idle=sq_thread_idle)
            try:
                self.fd = io_uring_setup(entries, p)
                break
            except OSError as e:
                if e.errno != errno.EINVAL or extra == attempts[-1]:
                    raise
        self.params, self.flags, self.features = p, p.flags, p.features
        self._stack.callback(os.close, self.fd)          # last to go: the ring itself

        # We need one mapping for both rings (IORING_FEAT_SINGLE_MMAP, 5.4) and a
        # timeout on waiting (IORING_FEAT_EXT_ARG, 5.11). The features, not the
        # version, decide: Debian's 5.10.262 has both (its stable series took later
        # io_uring work) and runs everything here but SEND_ZC, which needs 6.0.
        missing = REQUIRED_FEATURES & ~p.features
        if missing:
            raise Fatal(f"io_uring: this kernel ({platform.release()}) lacks "
                        f"{flag_names(missing, FEAT_NAMES, 'IORING_FEAT_')} (Linux 5.11+): "
                        f"use a newer kernel")
        self._map_rings(p)
        self.sq_tail = 0            # our copy of sq.tail (we own it)
        self.cq_head = 0            # our copy of cq.head (we own it)
        self.enter_fd = self.fd     # a registered index after register_ring_fd()
        self.enter_flags = 0
        # The bound on every send loop's waits: an IORING_ENTER_EXT_ARG
        # argument whose timespec is ENTER_WAIT_NS, built once and passed by
        # reference on every batch.
        self._wait_ts = kernel_timespec(*divmod(ENTER_WAIT_NS, 10**9))
        self._wait_arg = io_uring_getevents_arg(ts=ctypes.addressof(self._wait_ts))
        self._wait_ref = ctypes.byref(self._wait_arg)
        self._wait_size = ctypes.c_size_t(ctypes.sizeof(self._wait_arg))
        self._wait_flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG
        self._peek_flags = self._wait_flags       # ... | enter_flags, see register_ring_fd()
        self.sqpoll = bool(p.flags & IORING_SETUP_SQPOLL)

    def _map_rings(self, p: io_uring_params) -> None:
        """Like liburing's io_uring_mmap(): map the regions, find each ring word, check the kernel's promises.

        The SQ ring's words and index array and the CQ ring with its CQEs
        share one mapping (IORING_FEAT_SINGLE_MMAP), sized for the larger.
        """
        sq_off, cq_off = p.sq_off, p.cq_off
        sq_size = sq_off.array + p.sq_entries * U32_SIZE if sq_off.array else 0
        cq_size = cq_off.cqes + p.cq_entries * CQE_SIZE
        self._sq_map = self._map(max(sq_size, cq_size), IORING_OFF_SQ_RING)
        self._cq_map = self._sq_map     # one mapping, two names: each field read through its own ring
        self._sqe_map = self._map(p.sq_entries * SQE_SIZE, IORING_OFF_SQES)

        # u32 views of each ring's words; the kernel's offsets are in bytes.
        sq_words = self._sq_words = self._hold(self._view(self._sq_map).cast("I"))
        cq_words = self._cq_words = self._hold(self._view(self._cq_map).cast("I"))
        self._sq_head_i, self._sq_tail_i = sq_off.head // U32_SIZE, sq_off.tail // U32_SIZE
        self._sq_flags_i = sq_off.flags // U32_SIZE
        self._cq_head_i, self._cq_tail_i = cq_off.head // U32_SIZE, cq_off.tail // U32_SIZE
        self._cq_overflow_i = cq_off.overflow // U32_SIZE
        self.sq_entries = sq_words[sq_off.ring_entries // U32_SIZE]
        self.sq_mask = sq_words[sq_off.ring_mask // U32_SIZE]
        self.cq_entries = cq_words[cq_off.ring_entries // U32_SIZE]
        self.cq_mask = cq_words[cq_off.ring_mask // U32_SIZE]

        # What the kernel promised; if any fails, the code above is wrong.
        assert self.sq_mask == self.sq_entries - 1 and self.cq_mask == self.cq_entries - 1
        assert (self.sq_entries, self.cq_entries) == (p.sq_entries, p.cq_entries)
        assert self.cq_entries >= self.sq_entries
        assert sq_words[self._sq_head_i] == sq_words[self._sq_tail_i] == 0
        assert cq_words[self._cq_head_i] == cq_words[self._cq_tail_i] == 0

        # The SQE array as bytes, and the CQE array as strided views: res of
        # CQE i is _cqe_res[i], its flags _cqe_flags[i]. Reaping slices these,
        # so judging a thousand CQEs is a few C loops, not a Python loop. The
        # views stop at cq_entries CQEs: what follows in the mapping is the SQ
        # index array, which a longer view would read as CQEs.
        self._sqes = self._view(self._sqe_map)
        self.cqe_start, self.cqe_end = cq_off.cqes, cq_off.cqes + self.cq_entries * CQE_SIZE
        cqe_bytes = self._hold(self._view(self._cq_map)[self.cqe_start:self.cqe_end])
        for name, fmt, item in (("user_data", "Q", u64), ("res", "i", s32), ("flags", "I", u32)):
            step = ctypes.sizeof(item)       # the field's item type, from its offset, one per CQE
            start = getattr(io_uring_cqe, name).offset // step
            setattr(self, "_cqe_" + name, self._hold(cqe_bytes.cast(fmt)[start::CQE_SIZE // step]))
        assert len(self._cqe_res) == len(self._cqe_flags) == self.cq_entries

        if not (p.flags & IORING_SETUP_NO_SQARRAY):
            # The SQ array maps ring slot -> SQE index. We always put SQE i in
            # slot i (as liburing does), so we fill it once with the identity.
            array_i = sq_off.array // U32_SIZE
            sq_words[array_i:array_i + self.sq_entries] = memoryview(
                struct.pack(f"{self.sq_entries}I", *range(self.sq_entries))).cast("I")

    def _map(self, size: int, offset: int) -> mmap.mmap:
        # MAP_POPULATE: fault the pages in now rather than on first touch.
        m = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | MAP_POPULATE,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        self._stack.callback(m.close)      # munmap; runs before os.close(fd)
        return m

    def _view(self, m: mmap.mmap) -> memoryview:
        return self._hold(memoryview(m))

    def _hold(self, v: memoryview) -> memoryview:
        # Every view of an mmap, derived ones too, holds an export of it: each
        # must be released (latest first) before the mmap can be unmapped.
        self._stack.callback(v.release)
        return v

    def close(self) -> None:
        """io_uring_queue_exit(): unregister, release the views, unmap, close: setup in reverse."""
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def setup_flags(self) -> List[str]:
        return [name for bit, name in SETUP_NAMES.items() if self.flags & bit]

    # --- registration ---------------------------------------------------------
    def register_files(self, fds: List[int]) -> None:
        """io_uring_register_files(): sqe.fd becomes an index, saving a file lookup per SQE."""
        arr = (ctypes.c_int32 * len(fds))(*fds)
        io_uring_register(self.fd, IORING_REGISTER_FILES, ctypes.byref(arr), len(fds))
        self._stack.callback(io_uring_register, self.fd, IORING_UNREGISTER_FILES, 0, 0)

    def register_buffers(self, bufs: List[Tuple[int, int]]) -> None:
        """io_uring_register_buffers(): pin the pages once, instead of once per send.

        A SEND_ZC with IORING_RECVSEND_FIXED_BUF then skips get_user_pages()
        and page reference counting on every request. The pinned pages count
        against RLIMIT_MEMLOCK for users without CAP_IPC_LOCK.
        """
        iovs = (iovec * len(bufs))(*[iovec(a, n) for a, n in bufs])
        io_uring_register(self.fd, IORING_REGISTER_BUFFERS, ctypes.byref(iovs), len(bufs))
        self._stack.callback(io_uring_register, self.fd, IORING_UNREGISTER_BUFFERS, 0, 0)

    def register_ring_fd(self) -> bool:
        """io_uring_register_ring_fd() (5.18): io_uring_enter skips the fd lookup."""
        up = io_uring_rsrc_update(offset=U32, data=self.fd)
        try:
            io_uring_register(self.fd, IORING_REGISTER_RING_FDS, ctypes.byref(up), 1)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return False    # older kernel: keep entering by fd
            raise
        self.enter_fd, self.enter_flags = up.offset, IORING_ENTER_REGISTERED_RING
        self._peek_flags = self._wait_flags | self.enter_flags
        done = io_uring_rsrc_update(offset=up.offset)
        self._stack.callback(io_uring_register, self.fd, IORING_UNREGISTER_RING_FDS,
                             ctypes.byref(done), 1)
        return True

# =============================================================================
# 4. Submit, reap (still class Ring)
#
# First the calls a C program makes with liburing, one SQE and one CQE at a
# time: place SQEs, submit and wait, peek a CQE, mark it seen. Section 6's
# reference sender is built from these. Then the same in bulk, for section
# 7's bulk send and the tool's fast sender (section 8).
# =============================================================================

    def sq_space_left(self) -> int:
        """io_uring_sq_space_left(): free SQ slots (sq.head is the kernel's)."""
        return self.sq_entries - ((self.sq_tail - self._sq_words[self._sq_head_i]) & U32)

    def place(self, sqes: bytes) -> None:
        """io_uring_get_sqe() for len(sqes) // SQE_SIZE SQEs at once, plus the memcpy.

        The SQEs go in at slot sq_tail & mask onward, split in two where they
        pass the end of the array (the wraparound). SQEs that do not fit raise
        SubmissionQueueFull, where io_uring_get_sqe() returns NULL: the slots
        from sq.head to our tail are still the kernel's. The tail is published
        only by the submit that follows.
        """
        n = len(sqes) >> SQE_SHIFT
        if n > self.sq_space_left():
            raise SubmissionQueueFull(f"{n} SQEs do not fit: {self.sq_space_left()} of "
                                      f"{self.sq_entries} slots free")
        i = self.sq_tail & self.sq_mask
        if i + n <= self.sq_entries:
            self._sqes[i << SQE_SHIFT:(i + n) << SQE_SHIFT] = sqes
        else:                                    # wrapped: the rest goes to slot 0
            first = self.sq_entries - i
            self._sqes[i << SQE_SHIFT:] = sqes[:first << SQE_SHIFT]
            self._sqes[:(n - first) << SQE_SHIFT] = sqes[first << SQE_SHIFT:]
        self.sq_tail = (self.sq_tail + n) & U32

    def _flush_sq(self) -> Tuple[int, int]:
        """liburing's __io_uring_flush_sq(): publish sq.tail; what to submit, and enter flags.

        A plain store of sq.tail: the kernel reads it inside the io_uring_enter
        that follows, on this thread ("Memory ordering" above). With SQPOLL the
        enter wakes the SQ thread only if it sleeps and said so
        (IORING_SQ_NEED_WAKEUP), as liburing's sq_ring_needs_enter() decides.
        liburing puts a full barrier between the tail store and that load;
        Python has none, so a thread falling asleep at that moment may miss our
        tail until the next enter: the waits on SQPOLL rings are bounded, so that
        is a delay, never a hang.
        """
        words = self._sq_words
        words[self._sq_tail_i] = self.sq_tail      # after the SQEs; the enter that follows reads both
        asleep = self.sqpoll and words[self._sq_flags_i] & IORING_SQ_NEED_WAKEUP
        wakeup = IORING_ENTER_SQ_WAKEUP if asleep else 0
        return (self.sq_tail - words[self._sq_head_i]) & U32, wakeup | self.enter_flags

    def submit_and_wait(self, wait_nr: int) -> int:
        """io_uring_submit_and_wait(): publish sq.tail, submit, wait for wait_nr CQEs, in one syscall.

        IORING_ENTER_GETEVENTS always: with DEFER_TASKRUN it is what runs the
        task work that posts CQEs, so even wait_nr 0 collects what finished.
        Unbounded, unlike every other wait here: only the probes use it, on rings
        without SQPOLL, for requests that complete at once.
        """
        to_submit, flags = self._flush_sq()
        return io_uring_enter(self.enter_fd, to_submit, wait_nr, IORING_ENTER_GETEVENTS | flags)

    def wait_cqes(self, wait_nr: int, timeout_s: float) -> bool:
        """io_uring_wait_cqes() with a timeout (submitting what is placed): False if it ran out."""
        to_submit, flags = self._flush_sq()
        ts = kernel_timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
        arg = io_uring_getevents_arg(ts=ctypes.addressof(ts))
        try:
            io_uring_enter(self.enter_fd, to_submit, wait_nr,
                           IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG | flags,
                           ctypes.byref(arg), ctypes.c_size_t(ctypes.sizeof(arg)))
        except OSError as e:
            if e.errno == errno.ETIME:
                return False
            raise
        return True

    def cq_ready(self) -> int:
        """io_uring_cq_ready(): CQEs posted and not yet reaped (cq.tail is the kernel's)."""
        return (self._cq_words[self._cq_tail_i] - self.cq_head) & U32

    def peek_cqe(self) -> Optional[Tuple[int, int, int]]:
        """io_uring_peek_cqe(): the next ready CQE as (user_data, res, flags), or None.

        cq.tail is the kernel's: read it first, then the CQE it covers
        ("Memory ordering"). The CQE stays in its slot until cqe_seen(). Unlike
        liburing's, it never enters the kernel to flush overflowed CQEs or task
        work: callers wait_cqes() first.
        """
        if self._cq_words[self._cq_tail_i] == self.cq_head:
            return None
        i = self.cq_head & self.cq_mask
        return self._cqe_user_data[i], self._cqe_res[i], self._cqe_flags[i]

    def cqe_seen(self) -> None:
        """io_uring_cqe_seen(): done with the CQE peek_cqe() returned; its slot is the kernel's."""
        self.cq_advance(1)

    def cq_advance(self, n: int) -> None:
        """io_uring_cq_advance(): hand n CQE slots back to the kernel.

        Ordering: our reads of those CQEs are done (peek copied them into
        lists) before this store tells the kernel it may reuse the slots.
        """
        self.cq_head = (self.cq_head + n) & U32
        self._cq_words[self._cq_head_i] = self.cq_head

    @property
    def sq_head(self) -> int:
        return self._sq_words[self._sq_head_i]

    @property
    def cq_tail(self) -> int:
        return self._cq_words[self._cq_tail_i]

    @property
    def cq_held_back(self) -> bool:
        """IORING_SQ_CQ_OVERFLOW in sq.flags: CQEs are waiting in the kernel for room in the CQ.

        With IORING_FEAT_NODROP (5.5) a CQE with no free slot is kept on a
        kernel list, not lost, and posted by a later io_uring_enter once we
        free slots (io_cqring_event_overflow(), __io_cqring_overflow_flush()).
        Every loop here sizes its CQ so that this never happens; when it does,
        the run ends saying so, as tokio's and Zig's rings look at it too.
        """
        return bool(self._sq_words[self._sq_flags_i] & IORING_SQ_CQ_OVERFLOW)

    @property
    def cq_dropped(self) -> int:
        """The CQ ring's overflow word: CQEs the kernel *dropped*, with no memory even to hold
        them back (io_account_cq_overflow()). Held-back ones are cq_held_back, not counted here."""
        return self._cq_words[self._cq_overflow_i]

    # --- in bulk: what section 7's bulk send and section 8's fast sender use ----
    # Python pays per bytecode, the kernel per syscall, so a fast sender pays
    # both per *batch*: a batch of SQEs is one slice copy into the SQE array,
    # one store of sq.tail and one io_uring_enter that both submits and waits;
    # the CQEs that came back are judged by the list of their flags and the sum
    # of their res, with list.count and sum looping in C.

    def fill_sqes(self, sqe: bytes) -> None:
        """Write one SQE into every slot of the SQ array (no liburing twin).

        For a run whose requests are all the same SQE: the kernel only reads
        SQEs (it copies what it needs at submission), so once every slot holds
        it, getting and preparing the next n SQEs is moving our sq_tail by n.
        """
        self._sqes[:] = sqe * self.sq_entries

    def submit_and_peek(self, wait_nr: int) -> Tuple[List[int], int]:
        """io_uring_submit_and_wait_timeout(), then io_uring_peek_batch_cqe() in bulk.

        One io_uring_enter() submits every placed SQE and waits for wait_nr
        CQEs, at most ENTER_WAIT_NS. Then, for every ready CQE at once: the
        list of their flags (small ints, which CPython keeps premade, so no
        allocation) and the sum of their res, off the strided views. The CQEs
        stay put until cq_advance(). When the wait runs out with no CQE it
        raises OSError(ETIME), unless it submitted SQEs: then the kernel
        returns their count and the timeout goes unsaid. Either way what is
        ready is returned, perhaps less than wait_nr.
        """
        words, tail = self._sq_words, self.sq_tail
        words[self._sq_tail_i] = tail                       # see "Memory ordering" above
        check_enter(_syscall(NR_io_uring_enter, self.enter_fd, (tail - words[self._sq_head_i]) & U32,
                             wait_nr, self._peek_flags, self._wait_ref, self._wait_size))
        return self._peek_bulk(self._cq_words[self._cq_tail_i])

    def _peek_bulk(self, tail: int) -> Tuple[List[int], int]:
        """The flags of the CQEs from cq_head up to tail, and the sum of their res.

        ring_slices()' arithmetic written inline: this runs once per batch.
        """
        i = self.cq_head & self.cq_mask
        end = i + ((tail - self.cq_head) & U32)
        flags, res = self._cqe_flags, self._cqe_res
        if end <= self.cq_entries:
            return flags[i:end].tolist(), sum(res[i:end])
        end -= self.cq_entries                              # wrapped: tail part, then head part
        return flags[i:].tolist() + flags[:end].tolist(), sum(res[i:]) + sum(res[:end])

    def peek(self) -> Tuple[List[int], List[int]]:
        """io_uring_peek_batch_cqe(), as two lists: every ready CQE's res and flags.

        The CQEs stay in the ring until cq_advance(): the kernel will not
        overwrite a slot before we move cq.head past it.
        """
        n = self.cq_ready()
        return self.peek_res(n), [f for a, b in ring_slices(self.cq_head, n, self.cq_entries)
                                  for f in self._cqe_flags[a:b].tolist()]

    def peek_res(self, n: int) -> List[int]:
        """The res of the next n CQEs: exactly those a bulk peek counted.

        Not peek(): unless DEFER_TASKRUN holds completions back until we
        enter, more CQEs may have arrived since (with SQPOLL, at any moment).
        """
        return [r for a, b in ring_slices(self.cq_head, n, self.cq_entries)
                for r in self._cqe_res[a:b].tolist()]

    def peek_user_data(self, n: int) -> List[int]:
        """The user_data of the next n ready CQEs (for tracing; off the fast path)."""
        return [self._cqe_user_data[(self.cq_head + k) & self.cq_mask] for k in range(n)]

    def cqe_bytes(self, n: int, head: int) -> bytes:
        """The raw CQEs from counter head on, n of them, the wraparound joined (section 8's hot loop)."""
        m, start = self._cq_map, self.cqe_start
        return b"".join(m[start + (a << CQE_SHIFT):start + (b << CQE_SHIFT)]
                        for a, b in ring_slices(head, n, self.cq_entries))


def ring_slices(head: int, count: int, entries: int) -> List[Tuple[int, int]]:
    """The (start, stop) slot ranges of count entries from counter head: the wraparound in one place.

    An entry's slot is its counter & mask, and a run that passes the end of
    the array goes on at slot 0. place() and section 8's hot loop, which run once per
    batch, write the same arithmetic inline.
    """
    i = head & (entries - 1)
    end = i + count
    if end <= entries:
        return [(i, end)]
    return [(i, entries), (0, end - entries)]


# =============================================================================
# 5. Preparing SQEs
#
# liburing's io_uring_prep_* helpers are thin layers over one primitive,
# io_uring_prep_rw(), which sets the common fields. It does not clear the
# SQE: io_uring_get_sqe() already did (io_uring_initialize_sqe() zeroes the
# fields no prep sets). Ours fill a ctypes io_uring_sqe that is reused from
# request to request, so our prep_rw() zeroes it first, doing both jobs;
# bytes(sqe) is then the SQE_SIZE bytes place() copies into the ring.
# =============================================================================

def prep_rw(sqe: io_uring_sqe, op: int, fd: int, addr: int, length: int, offset: int) -> None:
    """io_uring_initialize_sqe() + io_uring_prep_rw(): zero the SQE, set opcode, fd, addr, len, off."""
    ctypes.memset(ctypes.addressof(sqe), 0, ctypes.sizeof(sqe))
    sqe.opcode, sqe.fd, sqe.addr, sqe.len, sqe.off = op, fd, addr, length, offset


def prep_nop(sqe: io_uring_sqe) -> None:
    """io_uring_prep_nop(): a request that does nothing and completes with res 0."""
    prep_rw(sqe, IORING_OP_NOP, -1, 0, 0, 0)


def prep_send(sqe: io_uring_sqe, fd: int, addr: int, length: int, msg_flags: int) -> None:
    """io_uring_prep_send(): send(2) as a request; the kernel copies the data."""
    prep_rw(sqe, IORING_OP_SEND, fd, addr, length, 0)
    sqe.msg_flags = msg_flags


def prep_send_zc(sqe: io_uring_sqe, fd: int, addr: int, length: int, msg_flags: int,
                 zc_flags: int) -> None:
    """io_uring_prep_send_zc(): send without copying; two CQEs follow (result, notification)."""
    prep_rw(sqe, IORING_OP_SEND_ZC, fd, addr, length, 0)
    sqe.msg_flags = msg_flags
    sqe.ioprio = zc_flags


def prep_send_zc_fixed(sqe: io_uring_sqe, fd: int, addr: int, length: int, msg_flags: int,
                       zc_flags: int, buf_index: int) -> None:
    """io_uring_prep_send_zc_fixed(): SEND_ZC from registered buffer buf_index.

    addr and length must lie inside that registered buffer.
    """
    prep_send_zc(sqe, fd, addr, length, msg_flags, zc_flags)
    sqe.ioprio |= IORING_RECVSEND_FIXED_BUF
    sqe.buf_index = buf_index


# =============================================================================
# 6. A zero-copy send, one CQE at a time
#
# Sections 3 to 5 put together the plain way: a sender that owns a small pool
# of buffers and keeps the zero-copy contract to the letter. `--pool N` runs
# it. Section 7 takes the same steps in bulk (bulk_send), and section 8's
# fast sender (BulkSender) makes them fast; all three number them alike:
#
#   (1) get SQEs             stamp a free buffer, prep a SEND_ZC from it, place it
#   (2) submit and wait      one io_uring_enter(): publish sq.tail, wait for a CQE
#   (3) peek CQEs            one at a time, from cq.head
#   (4) judge results        res = bytes or -errno; F_MORE: a notification is owed
#   (5) judge notifications  F_NOTIF: the kernel has let go of that buffer
#   (6) advance CQ           cqe_seen(): only now may the kernel reuse the slot
#   (7) drain                every owed notification, before the pool is unmapped
#
# Each request's user_data names its buffer and its sequence number, so every
# CQE says whose it is. A buffer is either free or lent to the kernel, from
# the submission of the request that reads it until that request's F_NOTIF;
# only a free buffer is rewritten, with the next sequence number stamped
# through it. Writing the buffer, then the SQE, then entering the kernel is
# program order on one thread: the syscall is the barrier (section 3).
#
# A datagram sender keeps every buffer in flight. A stream sends one request
# at a time: two sends in flight on one socket may put their bytes on the
# stream out of order (one that waits for socket space is retried after a
# later one went; the fast sender links them instead), and it still lends the kernel all
# N buffers: a TCP buffer comes back only once the peer has acknowledged its
# bytes, long after the send's result.
#
# --break-contract frees a buffer at its result CQE instead: it is rewritten
# while packets waiting in a queue may still point at its pages, and the
# receiver (`rx --pool`) finds a later request's stamp where an earlier one's
# belongs.
# =============================================================================

STAMP = struct.Struct("<QQ")    # what every 16 bytes of a pool request say: its sequence number, its size
UD_BUF_BITS = 16                # user_data = sequence number << UD_BUF_BITS | buffer index
MAX_POOL = 1 << UD_BUF_BITS


def stamp(seq: int, size: int) -> bytes:
    """The size bytes request seq sends: STAMP(seq, size) over and over, cut at size.

    Any 16 bytes name their request, so a receiver can check that a datagram
    (or a request's share of a stream) is one request's from end to end, and
    name the first byte that is not.
    """
    return (STAMP.pack(seq, size) * (size // STAMP.size + 1))[:size]


def pack_user_data(seq: int, buf: int) -> int:
    """io_uring_sqe_set_data64(): what comes back in every CQE the request causes."""
    return seq << UD_BUF_BITS | buf


def unpack_user_data(user_data: int) -> Tuple[int, int]:
    """io_uring_cqe_get_data64(), taken apart: (sequence number, buffer index)."""
    return user_data >> UD_BUF_BITS, user_data & (MAX_POOL - 1)


class Pool:
    """n page-aligned buffers of size bytes in one mapping; buffer i is registered buffer i.

    The zero-copy contract, per buffer: from the submission of a SEND_ZC
    that reads it until that request's F_NOTIF, the kernel's packets may
    point into its pages. Until then it must not change, nor be unmapped:
    the kernel holds its own page references, so an unmap would not crash
    it, but memory handed back can be handed out again and rewritten. `lent`
    counts the runs under way and the notifications that never came, and
    close() unmaps only when it is 0 (else the pages stay until exit).
    """

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size
        self.stride = -(-size // PAGE) * PAGE
        self.length = n * self.stride
        self.map = mmap.mmap(-1, self.length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_POPULATE)
        self.addr = _addr_of(self.map)
        self.lent = 0

    def buffer_addr(self, i: int) -> int:
        return self.addr + i * self.stride

    def write(self, i: int, data: bytes) -> None:
        """Rewrite buffer i: allowed only while the kernel does not hold it."""
        self.map[i * self.stride:i * self.stride + len(data)] = data

    def iovecs(self) -> List[Tuple[int, int]]:
        """(address, length) of each buffer, for io_uring_register_buffers()."""
        return [(self.buffer_addr(i), self.stride) for i in range(self.n)]

    def close(self) -> None:
        if not self.lent:
            self.map.close()
        else:                             # a collected mmap unmaps itself: keep it referenced
            STILL_LENT.append(self.map)


# Buffers the kernel may still send from, kept until exit (Pool.close).
STILL_LENT: List[mmap.mmap] = []


@dataclass
class Tally:
    """What CQEs said, judged one by one: (4) results and (5) notifications, counted."""
    results: int = 0      # result CQEs, whatever their res
    ok: int = 0           # ... of which res >= 0
    bytes: int = 0        # the sum of those res
    notifs: int = 0       # F_NOTIF CQEs
    due: int = 0          # results with F_MORE minus notifications: notifications still owed
    eagain: int = 0       # results -EAGAIN (only with MSG_DONTWAIT: first_send() says why)
    copied: int = 0       # notifications that said the kernel copied (REPORT_USAGE)
    short: int = 0        # good results of fewer bytes than asked
    failed: int = 0       # results with any other -errno
    error: int = 0        # the first of those errnos

    def judge(self, res: int, flags: int, size: int) -> None:
        """(4) a result: bytes sent or -errno, F_MORE if a notification is owed; (5) a notification.

        Strict, as the kernel selftest is: a notification with F_MORE is a bug.
        """
        if notif(flags):
            assert not more(flags), "a notification CQE with F_MORE set"
            self.notifs += 1
            self.due -= 1
            self.copied += copied(res)
            return
        self.results += 1
        self.due += more(flags)           # refused before the kernel took the pages: no F_MORE
        if res >= 0:
            self.ok += 1
            self.bytes += res
            self.short += res != size
        elif res == -errno.EAGAIN:
            self.eagain += 1
        else:
            self.failed += 1
            self.error = self.error or -res

    def add(self, t: "Tally") -> None:
        for name in ("results", "ok", "bytes", "notifs", "due", "eagain", "copied", "short", "failed"):
            setattr(self, name, getattr(self, name) + getattr(t, name))
        self.error = self.error or t.error


def drain_owed(owed: Callable[[], int], wait_and_reap: Callable[[float], None], seconds: float,
               hurry: Callable[[], bool]) -> float:
    """(7) drain: while owed(), wait_and_reap(seconds left), at most seconds or until hurry().

    Bounded: a TCP peer that stopped acknowledging could hold a send's pages
    for minutes. A signal (InterruptedError) only makes it look at hurry()
    again. Returns the seconds it waited. What never came is still the
    kernel's: its buffer stays mapped until exit. Every drain in this file is this loop.
    """
    start = time.perf_counter_ns()
    until = start + int(seconds * 1e9)
    while owed() and not hurry():
        left = (until - time.perf_counter_ns()) / 1e9
        if left <= 0:
            break
        try:
            wait_and_reap(left)
        except InterruptedError:
            continue
    return (time.perf_counter_ns() - start) / 1e9


class ReferenceSender:
    """SEND_ZC requests from a Pool through a Ring, each CQE judged on its own.

    The socket is registered file 0 of ring; with fixed, buffer i of the pool
    is registered buffer i. A stream (TCP) has one request in flight at a
    time. No liburing twin: this is the loop a C program writes around
    io_uring_get_sqe(), io_uring_submit_and_wait() and io_uring_peek_cqe().
    """

    def __init__(self, ring: Ring, pool: Pool, fixed: bool, stream: bool, zc_flags: int,
                 break_contract: bool = False):
        self.ring, self.pool, self.fixed, self.stream = ring, pool, fixed, stream
        self.zc_flags, self.break_contract = zc_flags, break_contract
        # MSG_WAITALL: io_uring retries a partial stream send until it is whole.
        self.msg_flags = socket.MSG_WAITALL if stream else 0
        self.sqe = io_uring_sqe()
        self.free = collections.deque(range(pool.n))    # buffers the kernel does not hold
        self.owed: Dict[int, int] = {}     # sequence number -> submission time: notification owed
        self.placed: List[int] = []        # placed, not yet submitted
        self.results_owed = 0              # submitted, result CQE not yet seen
        self.seq = 0                       # the next request's sequence number
        self.tally = Tally()
        self.broke = 0                     # buffers rewritten before their F_NOTIF (--break-contract)
        self.held_back = False             # the kernel held CQEs back for want of CQ room
        self.pinned_max = 0                # the most bytes the kernel held at once
        self.lags_ns: List[int] = []       # per request: submission to its F_NOTIF

    def send(self, buf: int) -> None:
        """(1) get SQEs: stamp free buffer buf with the next sequence number; prep and place a SEND_ZC.

        io_uring_get_sqe() + io_uring_prep_send_zc_fixed() (or _send_zc()):
        the SQE is built in self.sqe and copied into the ring by place().
        """
        seq, size, sqe = self.seq, self.pool.size, self.sqe
        self.pool.write(buf, stamp(seq, size))            # free: ours to write
        addr = self.pool.buffer_addr(buf)
        if self.fixed:
            prep_send_zc_fixed(sqe, 0, addr, size, self.msg_flags, self.zc_flags, buf)
        else:
            prep_send_zc(sqe, 0, addr, size, self.msg_flags, self.zc_flags)
        sqe.flags |= IOSQE_FIXED_FILE
        sqe.user_data = pack_user_data(seq, buf)
        self.ring.place(bytes(sqe))                       # SubmissionQueueFull if no slot is free
        self.placed.append(seq)
        self.seq += 1
        self.results_owed += 1

    def submit_and_wait(self, seconds: float) -> None:
        """(2) submit and wait: io_uring_submit_and_wait_timeout(ring, 1, seconds), then reap.

        Bounded, so that the caller sees the clock and a stop even when
        nothing completes (a TCP peer that stopped reading).
        """
        now = time.perf_counter_ns()
        for seq in self.placed:                           # the lag runs from here
            self.owed[seq] = now
        self.placed.clear()
        self.pinned_max = max(self.pinned_max, len(self.owed) * self.pool.size)
        self.ring.wait_cqes(1, seconds)
        self.reap()

    def reap(self) -> None:
        """(3) peek CQEs, (4)/(5) judge each, (6) advance: io_uring_peek_cqe() + io_uring_cqe_seen()."""
        ring, size = self.ring, self.pool.size
        cqe = ring.peek_cqe()
        while cqe is not None:
            user_data, res, flags = cqe
            ring.cqe_seen()                   # the CQE is copied out: its slot is the kernel's
            seq, buf = unpack_user_data(user_data)
            self.tally.judge(res, flags, size)
            if notif(flags):
                self.notification(seq, buf)
            else:
                self.result(seq, buf, flags)
            cqe = ring.peek_cqe()
        # The CQ had no room for some CQEs (FEAT_NODROP: the kernel holds them
        # and posts them as we make room): more in flight than the CQ holds.
        self.held_back = self.held_back or ring.cq_held_back

    def result(self, seq: int, buf: int, flags: int) -> None:
        """(4) after a result: without F_MORE its buffer is free at once; with it, at its notification."""
        self.results_owed -= 1
        if not more(flags):               # refused before the kernel took the pages: free now
            del self.owed[seq]
            self.free.append(buf)
        elif self.break_contract:         # WRONG, on purpose: the kernel may still read buf
            self.broke += 1
            self.free.append(buf)

    def notification(self, seq: int, buf: int) -> None:
        """(5) after a notification: the kernel has let go of buffer buf; it is free again."""
        assert seq in self.owed, "a notification that matches no request"
        self.lags_ns.append(time.perf_counter_ns() - self.owed.pop(seq))
        if not self.break_contract:
            self.free.append(buf)

    def run(self, count: int, deadline_ns: int, stop: Callable[[], bool]) -> Tally:
        """Send until count requests (0: no limit), deadline_ns or stop(); not drained yet.

        The pool is lent from here until drain() settles it.
        """
        self.pool.lent += 1
        while not (self.tally.error or self.held_back or stop()):
            left = deadline_ns - time.perf_counter_ns()
            if left <= 0 or (count and self.seq >= count and not self.results_owed):
                break
            while self.may_send(count):
                self.send(self.free.popleft())                                # (1)
            try:                                                              # (2)-(6)
                self.submit_and_wait(min(ENTER_WAIT_NS, left) / 1e9)
            except InterruptedError:
                pass                                      # a signal: the loop looks at stop()
        return self.tally

    def may_send(self, count: int) -> bool:
        """A free buffer, a request left to send, and, on a stream, no result outstanding."""
        left = not count or self.seq < count
        return bool(self.free) and left and not (self.stream and self.results_owed)

    def drain(self, seconds: float, hurry: Callable[[], bool]) -> float:
        """(7) drain: every result and notification still owed, at most seconds; the seconds waited.

        What never came (len(self.owed)) keeps the pool mapped until exit
        (Pool.close): those buffers are still the kernel's.
        """
        waited = drain_owed(lambda: self.owed, self.submit_and_wait, seconds, hurry)
        self.pool.lent += len(self.owed) - 1              # settled: only what never came stays lent
        return waited


# =============================================================================
# 7. Run it: a first zero-copy send, then the same in bulk
#
# Part I to run: `sendzc.py --first-send`. First one request: a UDP socket, a
# ring, one SEND_ZC from plain memory on the socket's own fd, and its two
# CQEs judged with more(), notif() and copied(); nothing registered; section
# 6's steps, once. Then the same in bulk (bulk_send): a batch of SQEs per
# io_uring_enter, and every CQE that is ready reaped in one pass. The kernel's
# work per send stays; what a batch of N saves is the syscall's own cost (and
# from Python, a ctypes call), paid once instead of N times.
# =============================================================================

def first_send(dest: Tuple[str, int], size: int = 4096,
               say: Callable[[str], None] = print) -> List[Tuple[int, int]]:
    """One SEND_ZC over UDP, from a plain buffer and the socket's own fd: its CQEs, judged.

    What sections 1 to 6 taught, with nothing registered and nothing in bulk;
    `sendzc.py --first-send` runs it (section 12). Returns each CQE's (res, flags).
    No SO_ZEROCOPY: send(2)'s MSG_ZEROCOPY needs that socket option, but a
    SEND_ZC hands the socket its own notification (msg_ubuf, io_send_zc()),
    which __ip_append_data() takes without looking at the option. And never
    -EAGAIN: without MSG_DONTWAIT in msg_flags, a send the socket cannot take
    yet is parked until the socket is writable (io_arm_poll_handler()) and
    retried; only with it does the result carry -EAGAIN (REQ_F_NOWAIT).
    """
    data = ctypes.create_string_buffer((b"zero-copy!" * (size // 10 + 1))[:size], size)   # plain memory
    family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
    cqes: List[Tuple[int, int]] = []
    with socket.socket(family, socket.SOCK_DGRAM) as sock, Ring(4) as ring:
        sock.connect(dest)
        sqe = io_uring_sqe()
        prep_send_zc(sqe, sock.fileno(), ctypes.addressof(data), size, 0, IORING_SEND_ZC_REPORT_USAGE)
        sqe.user_data = 1
        ring.place(bytes(sqe))
        say(f"SEND_ZC of {size} bytes to {dest[0]} port {dest[1]}: one SQE, one io_uring_enter")
        owed = 1                                   # CQEs still to come: the result, for now
        while owed and ring.wait_cqes(1, 1.0):     # submits, then waits (a second at most)
            cqe = ring.peek_cqe()
            while cqe is not None:
                _, res, flags = cqe
                ring.cqe_seen()
                cqes.append((res, flags))
                owed -= 1
                if notif(flags):                   # (5) the kernel let go of the buffer
                    say(f"notification: the buffer is ours again; the kernel "
                        + ("copied (REPORT_USAGE): the receiver is on this host, or the path "
                           "fragments" if copied(res) else "sent it zero-copy (REPORT_USAGE)"))
                elif res < 0:                      # (4) a result: bytes or -errno
                    say(f"result: -{errno.errorcode.get(-res, res)}: {os.strerror(-res)}")
                else:
                    say(f"result: {res} bytes sent")
                if more(flags):                    # a notification follows: the buffer stays lent
                    owed += 1
                    say("  F_MORE: the kernel still holds the buffer; a notification will follow")
                cqe = ring.peek_cqe()
    return cqes


def reap_all(ring: Ring, tally: Tally, size: int) -> int:
    """(3) peek every ready CQE in one pass, (6) advance, (4)+(5) judge each; how many.

    Like liburing's io_uring_peek_batch_cqe() + io_uring_cq_advance(): one
    read of cq.tail, the ready CQEs' res and flags as two lists (section 4's
    peek(), wraparound and all), and one store of cq.head for all of them.
    """
    res, flags = ring.peek()
    ring.cq_advance(len(res))             # copied out: the slots are the kernel's again
    for r, f in zip(res, flags):
        tally.judge(r, f, size)           # more(): a notification owed; notif(), copied()
    return len(res)


def bulk_send(dest: Tuple[str, int], count: int = 64, batch: int = 8, size: int = 4096,
              say: Callable[[str], None] = print,
              stop: Callable[[], bool] = lambda: False) -> Tuple[Tally, int]:
    """first_send() in bulk: count SEND_ZC requests over UDP, up to batch per io_uring_enter.

    Like liburing's examples/send-zerocopy.c with nothing registered. Every
    request sends the same buffer, which never changes, so a request may go
    while earlier ones still owe notifications (a buffer whose data changes
    waits for its own: section 6's pool); only the socket's close and the
    buffer's unmap wait for all of them, (7). stop() ends it early.
    Returns section 6's Tally of what the CQEs said, and the enters it took.
    """
    tally, placed, enters = Tally(), 0, 0
    family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET

    def owed() -> int:
        """CQEs the kernel may still post: two per request without its result, then one per
        F_MORE until its notification (tally.due, the notifications owed)."""
        return 2 * (placed - tally.results) + tally.due

    def submit_and_reap(wait_nr: int, seconds: float) -> bool:
        """(2) one io_uring_enter submits every placed SQE and waits; (3)-(6) reap_all(). False: none came."""
        nonlocal enters
        enters += 1
        try:
            came = ring.wait_cqes(wait_nr, seconds)
        except InterruptedError:                     # a signal: the loop looks at stop()
            came = True
        return reap_all(ring, tally, size) > 0 or came

    # Section 6's Pool, of one buffer: its close() unmaps it only when nothing is owed.
    # A CQ of 4 x batch: two CQEs per request of a batch, while the last batch's
    # notifications may still be on their way. Closed in reverse: ring, socket, buffer.
    with closing(Pool(1, size)) as pool, socket.socket(family, socket.SOCK_DGRAM) as sock, \
            Ring(batch, cq_entries=4 * batch) as ring:
        pool.write(0, (b"zero-copy!" * (size // 10 + 1))[:size])
        pool.lent = 1                                # the kernel's from the first submit
        sock.connect(dest)
        sqe = io_uring_sqe()
        prep_send_zc(sqe, sock.fileno(), pool.addr, size, 0, IORING_SEND_ZC_REPORT_USAGE)
        say(f"then the same in bulk: {count} SEND_ZC of {size} bytes, {batch} per io_uring_enter")
        while placed < count and not (tally.error or stop()):
            # (1) get SQEs: the same SQE n times, one copy into the ring; no
            # more than the CQ has room for, or the kernel holds CQEs back.
            n = min(batch, count - placed, ring.sq_space_left(), (ring.cq_entries - owed()) // 2)
            ring.place(bytes(sqe) * n)
            placed += n
            if not submit_and_reap(max(n, 1), 1.0):
                break                                # nothing in a second: (7) says what is owed
        drain_owed(owed, lambda s: submit_and_reap(1, s), 1.0, lambda: False)     # (7) drain
        pool.lent = 1 if owed() else 0               # what never came keeps the buffer mapped
    say(f"  {enters} io_uring_enter for {placed} requests: {tally.results} results, {tally.bytes} bytes sent"
        + (f"; the first error: -{errno.errorcode.get(tally.error, tally.error)}" if tally.error else ""))
    say(f"  {tally.notifs} notifications for {tally.notifs + tally.due} results with F_MORE "
        f"({tally.copied} said the kernel copied); {owed()} CQEs still owed")
    return tally, enters


# Section 8's BulkSender, the tool's sender, is this loop made fast, in the
# same steps (1) to (7): the buffer and the socket registered once (no page
# pinning nor file lookup per request); Python's work paid per batch, not per
# request (the SQ filled once, a batch's CQEs compared as one bytes object);
# -t kept however slowly the path drains; and the odd CQE (an error, a short
# send, a copy) found without judging every CQE one by one.


# =============================================================================
# 8. The senders
#
# First the fast sender, BulkSender: section 7's bulk send made fast. The
# reference sender pays Python for every request and every CQE (a prep, a
# place, a call per CQE), bulk_send for every CQE (a judge() each), which
# costs more than the kernel's ~2 us for the send itself. The fast sender
# takes the same steps and changes what each costs:
#
#   (1) get SQEs             datagrams: nothing, every SQ slot already holds the
#                            request; a stream: one slice copy of a prebuilt batch
#   (2) submit and wait      one store of sq.tail, one io_uring_enter per batch
#   (3) peek CQEs            one slice of the CQ mapping: the batch's CQE bytes
#   (4)+(5) judge            one bytes comparison with the clean batch, or one lookup
#   (6) advance CQ           one store of cq.head
#   (7) drain                as in 6 and 7: every owed notification before the buffer goes
#
# It sends from one buffer that is written once and never again, so no write
# can race the kernel's reads: every request may reuse it while notifications
# are still owed (a sender whose data changes needs section 6's pool). And every
# request of a datagram run is the same SQE, user_data included, so a batch
# is judged as a whole; only a batch that is not clean is looked at closer
# (judge_odd, judge), and only one where something went wrong is walked CQE by
# CQE (judge_each, section 6's judging with counters instead of buffers).
#
# Then what every sender needs around it ("Around the senders", below).
# =============================================================================

class StopRequest:
    """The tool's request to end a run early: section 12's signal handlers set STOP, every loop reads
    it once per batch."""

    def __init__(self):
        self.requested = False   # Ctrl-C once: end the run, drain, print the partial result
        self.hurry = False       # Ctrl-C twice: stop waiting for notifications too
        self.signum = signal.SIGINT   # the first signal that asked: main()'s status and line name it


STOP = StopRequest()

# The same syscall() without letting go of the GIL: CDLL releases and retakes
# it around every call (~60 ns), which pays only if another thread of ours has
# Python to run meanwhile. The tool's hot loop has none (it runs one ring per
# process), and a signal still interrupts a wait (EINTR): BulkSender's hot loop
# enters through it.
_syscall_gil = ctypes.PyDLL(None, use_errno=True).syscall
_syscall_gil.restype = ctypes.c_long


def judge_each(res: List[int], flags: List[int], size: int, zc: bool = False) -> Tally:
    """(4)+(5) one CQE at a time, as section 6's reap() does: errors, EAGAIN, copies, odd flags.

    Plus what links bring, seen on 6.18 when a TCP peer goes away: a
    zero-copy request cancelled because the one linked before it failed
    completes with -ECANCELED and flags 0 (io_req_tw_fail_links()), no
    F_MORE, yet its notification still comes (io_send_zc_cleanup() flushes
    it). ECANCELED is no cause of its own: the error is the failed request's.
    """
    t = Tally()
    for r, f in zip(res, flags):
        if r == -errno.ECANCELED and not notif(f):
            t.results += 1
            t.failed += 1
            t.due += zc              # a zero-copy one's notification follows all the same
        else:
            t.judge(r, f, size)
    return t


@dataclass
class SendBooks:
    """One run's running state, shared by the hot loop, the general loop and the drain."""
    deadline: int                       # perf_counter_ns at which the run is up
    on_tick: Optional[Callable[[int, int], None]] = None    # called (bytes, requests) every tick_ns
    tick_ns: int = 0
    next_tick: int = 0
    inflight: int = 0     # results not yet seen
    due: int = 0          # notifications promised (F_MORE) not yet seen
    whole: int = 0        # good results, counted in bulk
    notifs: int = 0       # good notifications, counted in bulk
    copied: int = 0       # ... of which said the kernel copied (REPORT_USAGE)
    placed: int = 0       # requests placed: a stream's batch starts at offset placed*size
    slow: Tally = field(default_factory=Tally)   # everything else, judged one by one
    entered: Optional[OSError] = None            # io_uring_enter failed: the run ends with that
    held_back: bool = False  # the kernel held CQEs back for want of CQ room: the run ends with that
    stopped: bool = False  # a stop had ended the run before the drain began
    waited: float = 0.0    # seconds the drain waited
    lags_ns: List[int] = field(default_factory=list)   # sampled: submission to the F_NOTIF that settles it
    pinned_max: int = 0    # the most bytes the kernel held when a sample began


class KnownBatch:
    """A batch's CQE bytes judged once (judge_odd), and what they added: `seen`'s values."""
    __slots__ = ("times", "results", "owed", "whole", "notifs", "copied")

    def __init__(self, results: int, owed: int, whole: int, notifs: int, copied: int):
        self.times = 0              # how often the hot loop met these bytes again
        self.results, self.owed = results, owed     # results they hold, notifications they leave owed
        self.whole, self.notifs, self.copied = whole, notifs, copied   # what judging them added


# The hot loop looks at the clock (and at the stop request) once per this many batches,
# as liburing's send-zerocopy does once per 16: a clock read costs about as
# much Python as the rest of a batch.
CLOCK_EVERY = 16
SEEN_MAX = 256                # distinct odd batches the hot loop remembers (memory stays flat)
HOT_USER_DATA = 0             # every hot request's user_data: alike, so a clean batch is known by its bytes
# A CQE read as u64 words: user_data, then res and flags together. The hot
# loop counts a stream's CQEs by that second word (run_hot()).
CQE_WORDS = CQE_SIZE // ctypes.sizeof(u64)
CQE_RES_FLAGS_WORD = io_uring_cqe.res.offset // ctypes.sizeof(u64)
assert io_uring_cqe.flags.offset // ctypes.sizeof(u64) == CQE_RES_FLAGS_WORD, "res and flags share a word"


def res_flags_word(cqe: bytes) -> int:
    """The u64 of a CQE's bytes that holds its res and flags."""
    return memoryview(cqe).cast("Q")[CQE_RES_FLAGS_WORD]


class BulkSender:
    """Batches of per_batch sends of one buffer, judged in bulk: liburing's examples/send-zerocopy.c.

    Section 7's bulk_send() made fast, in the same steps (1) to (7).

    The ring comes set up: the socket is its registered file 0 and, with
    fixed, the buffer its registered buffer 0. buf (Payload, below) has
    .addr; .period, the length after which its bytes repeat (it is that much
    longer than size, so a stream's send may start at any offset below it
    and the stream stays one continuous pattern); and .lent, which begin()
    raises and drain() settles, as Pool.lent. per_batch is the seed's nr_reqs.
    """

    def __init__(self, ring: Ring, buf, size: int, per_batch: int, zc: bool = True,
                 fixed: bool = True, stream: bool = False, report_usage: bool = False):
        self.ring, self.buf, self.size, self.per_batch = ring, buf, size, per_batch
        self.zc, self.fixed, self.stream, self.report_usage = zc, fixed, stream, report_usage
        self._batches: Dict[int, bytes] = {}
        self.seen: Dict[bytes, KnownBatch] = {}

    # --- (1) building SQEs ----------------------------------------------------
    def prep(self, sqe: io_uring_sqe, phase: int, user_data: int) -> None:
        """One request: send size bytes from the buffer, starting at offset phase."""
        addr, size = self.buf.addr + phase, self.size
        # A stream: MSG_WAITALL makes io_uring retry a partial send until it
        # is whole, so every request moves exactly size bytes of the stream.
        msg_flags = socket.MSG_WAITALL if self.stream else 0
        zc_flags = IORING_SEND_ZC_REPORT_USAGE if self.report_usage else 0
        fd = 0                                    # index 0 of the registered files
        if not self.zc:
            prep_send(sqe, fd, addr, size, msg_flags)
        elif self.fixed:
            prep_send_zc_fixed(sqe, fd, addr, size, msg_flags, zc_flags, 0)
        else:
            prep_send_zc(sqe, fd, addr, size, msg_flags, zc_flags)
        sqe.flags |= IOSQE_FIXED_FILE
        sqe.user_data = user_data

    def batch_sqes(self, phase: int) -> bytes:
        """The bytes of one batch of SQEs, built once per starting offset.

        Datagrams always start at 0. A stream's request j starts at phase +
        j*size, and the requests are linked (IOSQE_IO_LINK), so each begins
        only after the one before it finished: a send that must wait for
        socket space would otherwise be overtaken and the stream reordered.
        A link holds only with MSG_WAITALL (prep() sets it for a stream):
        without it a short send is no error, and the chain goes on after it.
        """
        got = self._batches.get(phase)
        if got is None:
            sqe, parts = io_uring_sqe(), []
            for j in range(self.per_batch):
                self.prep(sqe, (phase + j * self.size) % self.buf.period if self.stream else 0, j)
                if self.stream and j < self.per_batch - 1:
                    sqe.flags |= IOSQE_IO_LINK
                parts.append(bytes(sqe))
            got = self._batches[phase] = b"".join(parts)
        return got

    # --- the run ----------------------------------------------------------------
    def begin(self, deadline: int, on_tick: Optional[Callable[[int, int], None]] = None,
              tick_ns: int = 0) -> SendBooks:
        """Open the books of a run that ends at deadline (perf_counter_ns); the buffer is lent."""
        self.books = SendBooks(deadline, on_tick, tick_ns,
                               time.perf_counter_ns() + tick_ns if tick_ns else deadline + 1)
        # Lent until drain() settles it: if anything raises before then, the
        # buffer stays mapped (it may still be the kernel's, as Pool's are).
        self.buf.lent += 1
        return self.books

    def send(self) -> None:
        """(1)-(6) until the deadline, a stop request or an error (the tool's UringSender goes on
        in a general loop where the hot loop hands over: below)."""
        self.run_hot()

    def run_hot(self) -> bool:
        """The hot loop: one batch in flight, every batch judged in bulk; False hands over.

        Longer than any other function here, on purpose: it is the tool's
        speed, written flat, every name bound to a local first. In CPython a
        local is an array slot, an attribute or a global a dictionary lookup,
        a call a new frame; each costs ~20-50 ns, against ~2 us of kernel work
        for a 64 KB SEND_ZC. Everything off the common path is a method of its
        own, reached only when a check fails: a batch never judged before
        (judge_odd), the clock passing a tick or the deadline (at_tick),
        results still owed (wait_owed), an io_uring_enter that did not submit
        the batch (False: UringSender.run_general() takes over).
        """
        ring, books, stream, size, zc = self.ring, self.books, self.stream, self.size, self.zc
        per_batch = self.per_batch
        if stream:
            # (1) for a stream: the batch of every starting offset, built once.
            period = self.buf.period
            by_phase = [self.batch_sqes(p) for p in range(period)]
            phase, step = books.placed * size % period, per_batch * size % period
        else:
            # (1) for datagrams, once for the whole run: the kernel only reads
            # SQEs, so once every slot holds the request, claiming n slots is
            # moving our tail by n.
            sqe = io_uring_sqe()
            self.prep(sqe, 0, HOT_USER_DATA)
            ring.fill_sqes(bytes(sqe))
            by_phase, phase, step, period = [], 0, 0, 1
        # A clean datagram batch's CQEs, byte for byte: per_batch results of
        # size bytes (F_MORE if zero-copy), then their notifications saying
        # the kernel let go without copying (res 0). With DEFER_TASKRUN that
        # is their order when the enter returns: results are posted as the
        # submission ends, notifications by the task work (section 3) the
        # enter runs before it returns. Other datagram batches are looked up
        # in `seen`.
        one_result = bytes(io_uring_cqe(HOT_USER_DATA, size, IORING_CQE_F_MORE if zc else 0))
        one_notif = bytes(io_uring_cqe(HOT_USER_DATA, 0, IORING_CQE_F_NOTIF))
        clean = None if stream else one_result * per_batch + (one_notif * per_batch if zc else b"")
        seen = self.seen
        # A stream's CQEs come in more orders than `seen` holds: a TCP peer's
        # ACKs free the notifications at their own pace, so a batch's results
        # arrive among any number of older notifications. One not seen before
        # is counted, by the word of each CQE that holds res and flags (its
        # second u64): in a whole batch each is one of three words. (The bulk
        # judgement, judge_odd(), is for what is not whole.)
        result_word, notif_word = res_flags_word(one_result), res_flags_word(one_notif)
        copied_word = res_flags_word(bytes(io_uring_cqe(HOT_USER_DATA, NOTIF_COPIED_RES, IORING_CQE_F_NOTIF)))
        stream_whole = stream_notifs = stream_copied = 0      # what the stream's whole batches added

        syscall, enter, enter_fd, u32 = _syscall_gil, NR_io_uring_enter, ring.enter_fd, U32
        wait_flags, wait_ref, wait_size = ring._peek_flags, ring._wait_ref, ring._wait_size
        wait_owed, judge_odd, seen_get = self.wait_owed, self.judge_odd, seen.get
        sq_words, sq_tail_i, sq_mask, sq_entries = ring._sq_words, ring._sq_tail_i, ring.sq_mask, ring.sq_entries
        sq_flags_i, sqes = ring._sq_flags_i, ring._sqes
        cq_words, cq_tail_i, cq_head_i = ring._cq_words, ring._cq_tail_i, ring._cq_head_i
        cq_map, cqe_start, cqe_end = ring._cq_map, ring.cqe_start, ring.cqe_end
        cq_mask, clock, stop, held_back = ring.cq_mask, time.perf_counter_ns, STOP, IORING_SQ_CQ_OVERFLOW
        sq_tail, cq_head = ring.sq_tail, ring.cq_head
        inflight, due = books.inflight, books.due
        lags_append, sample_t, sample_due = books.lags_ns.append, 0, 0    # the lag sample under way
        # The CQ never overflows: before the next reap the kernel can post a
        # result and a notification for each request in flight, plus every
        # notification still due, so a batch goes in only while `due` is at
        # most what that leaves.
        due_max = ring.cq_entries - 2 * per_batch
        check_at = min(books.deadline, books.next_tick)    # the clock's next reason to stop
        batches = placed = ret = 0      # clean datagram batches; requests placed; the last enter's answer
        done = True                     # False: hand over to a general loop
        countdown = 1                   # batches until the next look at the clock and at the stop request

        while True:
            countdown -= 1
            if not countdown:
                countdown = CLOCK_EVERY
                now = clock()
                # The deadline, a stop request, a tick, or CQEs held back (IORING_SQ_CQ_OVERFLOW)
                if now >= check_at or stop.requested or sq_words[sq_flags_i] & held_back:
                    check_at = self.at_tick(now, batches * per_batch)
                    if not check_at:
                        break
                elif zc and not sample_t and not inflight:
                    # (5) time this batch: from its submission until the
                    # notifications owed now and its own have all come (a
                    # socket's come in order). One in CLOCK_EVERY batches.
                    sample_t, sample_due = now, due
                    books.pinned_max = max(books.pinned_max, (per_batch + due) * size)
            if not inflight and due <= due_max:
                if stream:
                    # (1) get SQEs: the batch that starts where the stream stands.
                    slot = sq_tail & sq_mask
                    if slot + per_batch <= sq_entries:
                        sqes[slot << SQE_SHIFT:(slot + per_batch) << SQE_SHIFT] = by_phase[phase]
                    else:                           # it wraps: place() splits it
                        ring.sq_tail = sq_tail
                        ring.place(by_phase[phase])
                    phase = (phase + step) % period
                sq_tail = (sq_tail + per_batch) & u32   # (1) claim the slots; a u32 counter wraps at 2**32
                # (2) submit and wait: a plain store of the tail, which the
                # kernel reads inside the io_uring_enter below, on this thread
                # (section 3, "Memory ordering").
                sq_words[sq_tail_i] = sq_tail
                inflight = per_batch
                placed += per_batch
                # min_complete per_batch, not 0: with DEFER_TASKRUN the enter
                # runs the batch's task work before it returns, so its
                # notifications come with it (since 6.13 in passes of at most
                # max(20, min_complete) items, IO_LOCAL_TW_DEFAULT_MAX: with
                # 0 some would come a batch late). Bounded by ENTER_WAIT_NS
                # (EXT_ARG), datagrams too: a shaping qdisc holds a send until
                # the socket has room again (5 Mbit/s tbf: a batch of 256 x
                # 1400 B takes 0.57 s). When the bound cuts the wait, the
                # enter still answers per_batch (it submitted them all), and
                # the batch is judged odd: results are still owed.
                ret = syscall(enter, enter_fd, per_batch, per_batch, wait_flags, wait_ref, wait_size)
                if ret != per_batch:                # an error, or a short submit
                    done = False
                    break
            else:                                   # results, or CQ room, still owed
                if countdown != CLOCK_EVERY:        # -t: look at the clock before each wait
                    countdown = 1
                    continue
                if not wait_owed(inflight or 1):
                    break
            # (3) peek CQEs: from cq.head (ours) to cq.tail (the kernel's), one
            # slice of the mapping unless they wrap past its end.
            k = (cq_words[cq_tail_i] - cq_head) & u32
            start = cqe_start + ((cq_head & cq_mask) << CQE_SHIFT)
            end = start + (k << CQE_SHIFT)
            cqes = cq_map[start:end] if end <= cqe_end else ring.cqe_bytes(k, cq_head)
            # (4) judge results and (5) notifications at once: the clean batch,
            # one seen whole before, or a stream's batch counted whole?
            if cqes == clean:
                batches += 1
                inflight -= per_batch
            else:
                known = seen_get(cqes)
                if known is not None:
                    known.times += 1
                    inflight -= known.results
                    due += known.owed
                else:
                    whole = False                       # a stream's batch, counted whole
                    if stream:                          # by the res-and-flags words (above)
                        words = memoryview(cqes).cast("Q")[CQE_RES_FLAGS_WORD::CQE_WORDS].tolist()
                        n_results, n_notif = words.count(result_word), words.count(notif_word)
                        n_copied = words.count(copied_word)
                        whole = n_results + n_notif + n_copied == k
                    if whole:
                        inflight -= n_results
                        due += (n_results if zc else 0) - n_notif - n_copied
                        stream_whole += n_results
                        stream_notifs += n_notif + n_copied
                        stream_copied += n_copied
                    else:
                        known = judge_odd(cqes)
                        inflight -= known.results
                        due += known.owed
                        assert inflight >= 0 and due >= 0, "more CQEs than requests: accounting is broken"
                        if books.slow.error:
                            cq_head = (cq_head + k) & u32
                            cq_words[cq_head_i] = cq_head
                            break
            # (6) advance CQ: our reads are done (the slice copied them), so
            # only now may the kernel reuse those slots.
            cq_head = (cq_head + k) & u32
            cq_words[cq_head_i] = cq_head
            if sample_t and not inflight and due <= sample_due:    # (5) the sampled batch is settled
                lags_append(clock() - sample_t)
                sample_t = 0

        # Hand over: a general loop, the drain and the result read these.
        ring.sq_tail, ring.cq_head = sq_tail, cq_head
        books.inflight, books.due, books.placed = inflight, due, books.placed + placed
        books.whole += batches * per_batch + stream_whole
        books.notifs += (batches * per_batch if zc else 0) + stream_notifs
        books.copied += stream_copied
        for known in seen.values():
            books.whole += known.times * known.whole
            books.notifs += known.times * known.notifs
            books.copied += known.times * known.copied
            known.times = 0
        if ret < 0:
            try:
                check_enter(ret)
            except OSError as e:
                if e.errno not in (errno.EINTR, errno.ETIME):   # those two: a general loop may go on
                    books.entered = e
        return done

    def wait_owed(self, wait_nr: int) -> bool:
        """(2) without a submit: io_uring_wait_cqes() bounded by ENTER_WAIT_NS; False: enter failed for good.

        A signal (EINTR) or the bound (ETIME) only sends the caller back to
        its clock; any other error ends the run (books.entered says why).
        """
        ring = self.ring
        try:
            io_uring_enter(ring.enter_fd, 0, wait_nr, ring._peek_flags, ring._wait_ref, ring._wait_size)
        except OSError as e:
            if e.errno not in (errno.EINTR, errno.ETIME):
                self.books.entered = e
                return False
        return True

    def at_tick(self, now: int, hot_results: int) -> int:
        """The hot loop's look at the clock, the stop request and sq.flags: 0 ends the run, else the next."""
        books = self.books
        books.held_back = books.held_back or self.ring.cq_held_back
        if now >= books.deadline or STOP.requested or books.held_back:
            return 0
        whole = books.whole + hot_results + sum(k.times * k.whole for k in self.seen.values())
        books.on_tick(whole * self.size + books.slow.bytes, whole + books.slow.ok)
        books.next_tick += books.tick_ns
        return min(books.deadline, books.next_tick)

    def judge_odd(self, cqes: bytes) -> KnownBatch:
        """(4)+(5) for CQE bytes the hot loop has not seen: what they hold and add, as a KnownBatch.

        Still in bulk: the flags column and the sum of the res column, read
        off strided casts of the bytes. A batch judged whole goes into `seen`,
        so the same bytes next time cost one lookup.
        """
        books = self.books
        before = (books.whole, books.notifs, books.copied, books.slow.results)
        view = memoryview(cqes)
        try:
            words = CQE_SIZE // U32_SIZE
            flags = view.cast("I")[io_uring_cqe.flags.offset // U32_SIZE::words].tolist()
            res = view.cast("i")[io_uring_cqe.res.offset // U32_SIZE::words].tolist()
        finally:
            view.release()
        results, owed = self.judge(flags, sum(res), lambda k: res)
        known = KnownBatch(results, owed, books.whole - before[0], books.notifs - before[1],
                           books.copied - before[2])
        if books.slow.results == before[3] and len(self.seen) < SEEN_MAX:
            self.seen[cqes] = known          # whole: the same bytes will mean the same again
        return known

    def judge(self, flags: List[int], res_sum: int,
              peek_res: Callable[[int], List[int]]) -> Tuple[int, int]:
        """(4)+(5) k CQEs in bulk: (results, notifications they leave owed); peek_res(k): their res.

        If every CQE is a good result or a notification and the results add
        up to exactly size each, every send was whole and every notification
        said zero-copy: no send returns more than size, and a notification's
        res is 0, or bit 31 (copied) which reads as negative. An error, EAGAIN,
        a short send or a copy makes the sum fall short.
        """
        books, size = self.books, self.size
        k = len(flags)
        n_results = flags.count(IORING_CQE_F_MORE if self.zc else 0)   # results with the good flags
        n_notif = flags.count(IORING_CQE_F_NOTIF)
        clean = n_results + n_notif == k
        if clean and res_sum != n_results * size:
            # Second look, still in bulk: take the copied notifications (all
            # of them on loopback and veth) out of the sum; if the results then
            # add up, the batch was whole all the same.
            n_copied = peek_res(k).count(NOTIF_COPIED_RES)
            clean = res_sum - n_copied * NOTIF_COPIED_RES == n_results * size
            books.copied += n_copied if clean else 0
        if clean:
            books.whole += n_results
            books.notifs += n_notif
            return n_results, (n_results - n_notif if self.zc else 0)
        t = judge_each(peek_res(k), flags, size, self.zc)   # something went wrong: each CQE
        books.slow.add(t)
        if self.stream and t.short and not books.slow.error:
            books.slow.error = errno.EIO    # a short stream write (a reset): the stream would tear
        return t.results, t.due

    def drain(self, seconds: float) -> SendBooks:
        """(7) drain: every result and notification still owed, at most seconds (drain_owed()).

        A stop that ended the run leaves the drain its time (stop.hurry cuts
        it); one that comes while it waits cuts it.
        """
        ring, books, stop = self.ring, self.books, STOP
        stopped = books.stopped = stop.requested

        def wait_and_reap(left: float) -> None:
            ring.wait_cqes(1, left)
            res, flags = ring.peek()
            ring.cq_advance(len(flags))
            results, owed = self.judge(flags, sum(res), lambda k: res)
            books.inflight -= results
            books.due += owed
            books.held_back = books.held_back or ring.cq_held_back

        books.waited = drain_owed(lambda: books.inflight or books.due, wait_and_reap, seconds,
                                  lambda: stop.hurry or (stop.requested and not stopped))
        self.buf.lent += books.due + books.inflight - 1   # settled: only what never came stays lent
        return books


# --- Around the senders --------------------------------------------------------
#
# Every sender sends the same bytes: the seed's pattern, byte i = 'a' + i % 26,
# from one preallocated page-aligned buffer. Each returns a Result built from
# the kernel's own answers: bytes from CQE res (or send(2)'s return), CPU from
# getrusage(), time from a monotonic clock, and whether the kernel copied.
#
# In order: the socket ABI besides io_uring; the payload; Result and how it is
# printed; sockets, the path MTU and UDP GSO; the io_uring sender (BulkSender
# with a SendConfig, a general loop for SQPOLL and -f, --trace and a Result
# around it), -n flows, the reference sender's run; then the baselines,
# send(2) with and without MSG_ZEROCOPY.

# --- The socket ABI the tool uses beside io_uring (values from the kernel UAPI,
# for what Python's socket module may lack)
SO_ZEROCOPY = getattr(socket, "SO_ZEROCOPY", 60)          # <asm-generic/socket.h>
MSG_ZEROCOPY = getattr(socket, "MSG_ZEROCOPY", 0x4000000)  # <linux/socket.h>
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)             # <linux/in.h>
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)         # <linux/in6.h>
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)     # <asm-generic/socket.h>; root may pass rmem_max
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)             # 4.6: a socket's memory counters, u32 each
SK_MEMINFO_DROPS = 8                                       # <linux/sock_diag.h>: index of "dropped"
SO_EE_ORIGIN_ZEROCOPY = 5                                  # <linux/errqueue.h>
SO_EE_CODE_ZEROCOPY_COPIED = 1
IPPROTO_EGP = 8     # what the seed's raw mode sends: a protocol nobody answers
IP_MTU = getattr(socket, "IP_MTU", 14)                     # <linux/in.h>: a connected socket's path MTU
IPV6_MTU = getattr(socket, "IPV6_MTU", 24)                 # <linux/in6.h>: the same for IPv6
SOL_UDP = getattr(socket, "SOL_UDP", 17)                   # <linux/socket.h>
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)          # <linux/udp.h>, 4.18: UDP GSO's segment size
UDP_GRO = getattr(socket, "UDP_GRO", 104)                  # <linux/udp.h>, 5.0: coalesce on receive
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)           # <asm-generic/socket.h>: drops, per receive
# include/linux/udp.h (kernel-only): the most segments one GSO send may carry.
# 128 since 6.9 (1382e3b6a350, backported to the 5.15, 6.1 and 6.6 stable
# series in 2024); 64 before, and a kernel that has 64 answers EINVAL.
UDP_MAX_SEGMENTS = 128
UDP_MAX_SEGMENTS_BEFORE_6_9 = 64
IP_MAXPACKET = 65535
CLONE_NEWNET = 0x40000000                                  # <sched.h>
# <linux/capability.h>: locking memory past RLIMIT_MEMLOCK. Without it, registered
# buffers and a SEND_ZC's pinned pages count against that limit, and so do the rings
# before 5.12 and since 6.14 (section 2, io_uring_setup); the ENOMEM lines name it.
CAP_IPC_LOCK = 14


# <sys/socket.h>: what SENDMSG and SENDMSG_ZC read.
class msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", u32),
                ("msg_iov", ctypes.POINTER(iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class sock_extended_err(ctypes.Structure):
    """What MSG_ZEROCOPY's completions carry on the socket error queue."""
    _fields_ = [("ee_errno", u32), ("ee_origin", u8), ("ee_type", u8), ("ee_code", u8),
                ("ee_pad", u8), ("ee_info", u32), ("ee_data", u32)]


class tcp_info(ctypes.Structure):
    """struct tcp_info from <linux/tcp.h> up to tcpi_segs_in (4.2): getsockopt(TCP_INFO) takes a prefix."""
    _fields_ = [("tcpi_state", u8), ("tcpi_ca_state", u8), ("tcpi_retransmits", u8),
                ("tcpi_probes", u8), ("tcpi_backoff", u8), ("tcpi_options", u8),
                ("tcpi_snd_wscale", u8, 4), ("tcpi_rcv_wscale", u8, 4),
                ("tcpi_delivery_rate_app_limited", u8, 1), ("tcpi_fastopen_client_fail", u8, 2)] + [
        (n, u32) for n in (
            "tcpi_rto", "tcpi_ato", "tcpi_snd_mss", "tcpi_rcv_mss",
            "tcpi_unacked", "tcpi_sacked", "tcpi_lost", "tcpi_retrans", "tcpi_fackets",
            "tcpi_last_data_sent", "tcpi_last_ack_sent", "tcpi_last_data_recv", "tcpi_last_ack_recv",
            "tcpi_pmtu", "tcpi_rcv_ssthresh", "tcpi_rtt", "tcpi_rttvar", "tcpi_snd_ssthresh",
            "tcpi_snd_cwnd", "tcpi_advmss", "tcpi_reordering", "tcpi_rcv_rtt", "tcpi_rcv_space",
            "tcpi_total_retrans")] + [
        ("tcpi_pacing_rate", u64), ("tcpi_max_pacing_rate", u64), ("tcpi_bytes_acked", u64),
        ("tcpi_bytes_received", u64), ("tcpi_segs_out", u32), ("tcpi_segs_in", u32)]


assert (ctypes.sizeof(msghdr), ctypes.sizeof(sock_extended_err), ctypes.sizeof(tcp_info)) == (56, 16, 144)
assert (tcp_info.tcpi_rto.offset, tcp_info.tcpi_total_retrans.offset, tcp_info.tcpi_pacing_rate.offset,
        tcp_info.tcpi_bytes_received.offset, tcp_info.tcpi_segs_in.offset) == (8, 100, 104, 128, 140)


def unshare(flags: int) -> None:
    """unshare(2): e.g. CLONE_NEWNET gives this process a network namespace of its own."""
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        _raise_errno("unshare")


def setns(fd: int, nstype: int) -> None:
    """setns(2): move this thread into the namespace fd refers to (os.setns is 3.12+)."""
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        _raise_errno("setns")


def disconnect(fd: int) -> None:
    """connect(2) to AF_UNSPEC (Python's cannot): a UDP socket forgets its peer, keeps its port."""
    addr = struct.pack("=H14x", socket.AF_UNSPEC)        # struct sockaddr: sa_family, sa_data[14]
    if _libc.connect(ctypes.c_int(fd), addr, ctypes.c_uint(len(addr))) != 0:
        _raise_errno("connect")


def describe_sqe(slot: int, sqe: io_uring_sqe) -> str:
    """One SQE in words, for --trace: what the kernel will read from slot sq[slot]."""
    fd = f"fixed:{sqe.fd}" if sqe.flags & IOSQE_FIXED_FILE else str(sqe.fd)
    words = [f"sq[{slot}]", OPCODE_NAMES.get(sqe.opcode, f"op {sqe.opcode}"), f"fd={fd}",
             f"addr={sqe.addr:#x}", f"len={sqe.len}"]
    if sqe.opcode in (IORING_OP_SEND, IORING_OP_SEND_ZC, IORING_OP_SENDMSG, IORING_OP_SENDMSG_ZC):
        words.append(f"msg_flags={sqe.msg_flags:#x}")
        if sqe.ioprio:
            words.append(f"ioprio={flag_names(sqe.ioprio, SEND_FLAG_NAMES, 'IORING_')}")
        if sqe.ioprio & IORING_RECVSEND_FIXED_BUF:
            words.append(f"buf_index={sqe.buf_index}")
    words += [f"flags={flag_names(sqe.flags, SQE_FLAG_NAMES)}", f"user_data={sqe.user_data}"]
    return " ".join(words)


def describe_cqe(slot: int, user_data: int, res: int, flags: int) -> str:
    """One CQE in words, for --trace: res decoded as bytes, -errno or usage; flags by name."""
    if notif(flags):
        meaning = "copied" if copied(res) else "zero-copy"
        # Without REPORT_USAGE res is always 0 and says nothing either way.
    elif res < 0:
        meaning = f"-{errno.errorcode.get(-res, -res)}"
    else:
        meaning = "bytes"
    return (f"cq[{slot}] user_data={user_data} res={res} ({meaning}) "
            f"flags={flag_names(flags, CQE_FLAG_NAMES, 'IORING_CQE_')}")


PATTERN = bytes(range(ord("a"), ord("a") + 26))
PATTERN_LEN = len(PATTERN)
SNDBUF = 1 << 21        # the seed's SO_SNDBUF
DEFAULT_PORT = 8000     # the seed's port
# Header sizes, from <netinet/ip.h>, <netinet/ip6.h>, <netinet/udp.h>, <netinet/tcp.h>.
IPV4_HEADER, IPV6_HEADER, UDP_HEADER, TCP_HEADER, TCP_MAX_OPTIONS = 20, 40, 8, 20, 40
# The seed's maximum payload: IP_MAXPACKET minus an IPv6 header, a TCP header
# and the most TCP options. It fits every protocol and family, so it is the
# default size; the true per-protocol limits are in max_payload().
SEED_MAX_PAYLOAD = IP_MAXPACKET - IPV6_HEADER - TCP_HEADER - TCP_MAX_OPTIONS   # 65435
TCP_MAX_WRITE = 1 << 24     # a stream has no packet limit; this bounds the buffer (16 MiB)
MIB = 1 << 20
GIB = 1 << 30           # the GB of "CPU s/GB": 2**30 bytes, as MB is 2**20


def pattern(length: int, phase: int = 0) -> bytes:
    """length bytes of the pattern starting at stream offset phase."""
    reps = (phase + length) // PATTERN_LEN + 1
    return (PATTERN * reps)[phase:phase + length]


def max_payload(proto: str, family: int) -> int:
    """The largest payload one send may carry for this protocol and family."""
    # IPv4's total length counts its header; IPv6's payload length does not.
    ip_header = IPV4_HEADER if family == socket.AF_INET else 0
    if proto == "udp":
        return IP_MAXPACKET - ip_header - UDP_HEADER    # 65507 over IPv4, 65527 over IPv6
    if proto == "raw":
        return IP_MAXPACKET - ip_header                 # 65515 / 65535
    return TCP_MAX_WRITE


class Payload:
    """The buffer every request sends from (BulkSender's buf): page-aligned, written once, then only read.

    Never written after the first send, so every request may reuse it while
    notifications are outstanding (BulkSender, above). PATTERN_LEN bytes longer than a
    send, so a TCP write at stream offset o sends from o % 26 and the stream
    stays one pattern. `lent` counts runs under way and notifications that
    never came; close() unmaps only at 0, else the pages stay until exit (a
    later mmap() could be handed the addresses the kernel still sends from).
    """

    def __init__(self, size: int, segment: int = 0):
        self.size = size
        self.length = -(-(size + PATTERN_LEN) // PAGE) * PAGE
        self.map = mmap.mmap(-1, self.length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_POPULATE)
        # UDP GSO (segment: the UDP_SEGMENT size) cuts each send into
        # segment-byte datagrams, so the pattern restarts at 'a' every segment
        # bytes: every datagram on the wire checks on its own, as without GSO.
        unit = pattern(segment) if segment else pattern(self.length)
        self.map[:] = (unit * -(-self.length // len(unit)))[:self.length]
        self.addr = _addr_of(self.map)
        self.period = PATTERN_LEN   # a stream (no GSO) repeats the pattern every PATTERN_LEN bytes
        self.lent = 0           # runs under way + notifications never drained (see above)

    def close(self) -> None:
        """munmap(), unless the kernel may still be sending from these pages."""
        if not self.lent:
            self.map.close()
        else:
            STILL_LENT.append(self.map)     # as Pool.close(): kept referenced, so never unmapped


class Rates:
    """MB/s and Gbit/s of a result's .bytes over its measured .seconds (units: see README)."""

    @property
    def mb_per_s(self) -> float:
        return (self.bytes / MIB) / self.seconds if self.seconds else 0.0

    @property
    def gbit_per_s(self) -> float:
        return self.bytes * 8 / 1e9 / self.seconds if self.seconds else 0.0


@dataclass
class Result(Rates):
    """One run of one sender: what the kernel said, and what it cost."""
    mode: str
    proto: str
    size: int
    batch: int
    family: str = "ipv4"
    requests: int = 0          # sends the kernel completed (CQEs with res >= 0)
    bytes: int = 0             # sum of those results
    notifications: int = 0     # F_NOTIF CQEs (or MSG_ZEROCOPY completions) seen
    eagain: int = 0            # sends answered -EAGAIN (counted, as the seed does)
    enobufs: int = 0           # MSG_ZEROCOPY sends refused with ENOBUFS (optmem), retried
    seconds: float = 0.0       # measured wall time of the sending loop
    cpu_user_s: float = 0.0    # getrusage: time in Python and libc
    cpu_sys_s: float = 0.0     # getrusage: time in the kernel
    zc_copied: Optional[int] = None  # notifications that report a copy; None: kernel cannot say
    speedup: Optional[float] = None          # bench: mb_per_s over the baseline row's (the table's MB/s x)
    interrupted: bool = False
    error: Optional[str] = None
    undrained: int = 0         # completions still missing after the drain (DRAIN_SECONDS)
    drain_s: float = 0.0       # seconds the drain waited after the run for the kernel to let go
    failed: int = 0            # sends that failed, or were cancelled after one that did
    setup: List[str] = field(default_factory=list)
    intervals: Optional[List[dict]] = None   # -i: Intervals.rows of this run
    gso: Optional[int] = None  # --gso: the UDP_SEGMENT size each send was cut into
    pool: Optional[dict] = None              # --pool: pool_summary() of this run
    notif_lag: Optional[dict] = None         # the fast sender's sampled lag_summary()
    sys_speedup: Optional[float] = None      # bench: mb_per_sys_s over the baseline row's (the table's speedup)
    receiver: Optional[dict] = None          # rx's result, over the control connection (joined())
    receiver_note: Optional[str] = None      # why the report is the sender's alone, if it is
    receiver_missing: bool = False           # rx said ready, then its result never came: exit 1

    @property
    def datagrams(self) -> Optional[int]:
        """UDP datagrams that left: one per send, or one per GSO segment; None for TCP."""
        if self.proto == "tcp":
            return None
        return self.requests * (segments_per_send(self.size, self.gso) if self.gso else 1)

    @property
    def mb_per_sys_s(self) -> Optional[float]:
        """MB per second of kernel CPU (sys): the rate if Python cost nothing, as a C sender's nearly is."""
        return (self.bytes / MIB) / self.cpu_sys_s if self.cpu_sys_s > 0 else None

    @property
    def cpu_s_per_gb(self) -> Optional[float]:
        """CPU seconds (user + sys) per 2**30 bytes sent: the cost, whatever the speed."""
        return (self.cpu_user_s + self.cpu_sys_s) / (self.bytes / GIB) if self.bytes else None

    def row(self) -> dict:
        """The JSON row (README documents every field): ROW_FIELDS in order, then those a run may add."""
        row = {}
        for name in ROW_FIELDS:
            value, digits = getattr(self, name), ROW_DIGITS.get(name)
            row[name] = value if digits is None or value is None else round(value, digits)
        row.update((name, getattr(self, name)) for name in ("intervals", "pool", "notif_lag", "receiver",
                                                            "receiver_note") if getattr(self, name) is not None)
        return row


ROW_FIELDS = ("mode proto family size batch requests bytes notifications eagain enobufs seconds mb_per_s "
              "gbit_per_s speedup cpu_user_s cpu_sys_s cpu_s_per_gb zc_copied interrupted error undrained "
              "failed setup gso datagrams mb_per_sys_s sys_speedup drain_s").split()
ROW_DIGITS = {"seconds": 6, "mb_per_s": 1, "gbit_per_s": 3, "speedup": 2, "cpu_user_s": 3, "cpu_sys_s": 3,
              "cpu_s_per_gb": 4, "mb_per_sys_s": 1, "sys_speedup": 2, "drain_s": 3}


class Meter:
    """Wall clock and CPU of one run: perf_counter_ns and getrusage deltas."""

    def __init__(self, who: int = resource.RUSAGE_SELF):
        self.who = who
        self.t0 = time.perf_counter_ns()
        self.ru0 = resource.getrusage(who)

    def stop(self, result: Result) -> Result:
        ru = resource.getrusage(self.who)
        result.seconds = (time.perf_counter_ns() - self.t0) / 1e9
        result.cpu_user_s = ru.ru_utime - self.ru0.ru_utime
        result.cpu_sys_s = ru.ru_stime - self.ru0.ru_stime
        return result


# --- Reporting ---------------------------------------------------------------

class Intervals:
    """-i: a line per interval, as iperf3 prints; kept for JSON too."""

    def __init__(self, every_s: float, printing: bool, start_ns: int = 0):
        self.every_ns = int(every_s * 1e9)
        # Enough decimals that an interval's two ends differ: two for -i 0.1 and
        # longer; below, six or more, as an interval that catches up after a
        # stall can be far shorter than -i. JSON keeps nanoseconds.
        self.decimals = 2
        while every_s * 10 ** self.decimals < 10:
            self.decimals += 1
        if self.decimals > 2:
            self.decimals += 2
        self.printing = printing
        self.start_ns = start_ns
        self.last = (0, 0, 0)       # (ns since start, bytes, requests) at the last report
        self.rows: List[dict] = []

    def report(self, now_ns: int, nbytes: int, requests: int) -> None:
        t0, b0, r0 = self.last
        t1 = now_ns - self.start_ns
        dt = (t1 - t0) / 1e9 or 1e-9
        row = {"start": round(t0 / 1e9, 9), "end": round(t1 / 1e9, 9), "bytes": nbytes - b0,
               "requests": requests - r0, "mb_per_s": round((nbytes - b0) / MIB / dt, 1),
               "gbit_per_s": round((nbytes - b0) * 8 / 1e9 / dt, 3)}
        self.rows.append(row)
        self.last = (t1, nbytes, requests)
        if self.printing:
            width = self.decimals + 4
            print(f"[{row['start']:{width}.{self.decimals}f}-{row['end']:{width}.{self.decimals}f} s] "
                  f"{row['bytes'] >> 20:8d} MB "
                  f"{row['mb_per_s']:10.1f} MB/s {row['gbit_per_s']:8.2f} Gbit/s "
                  f"{row['requests']:9d} req", flush=True)


# Above this share of a run's CPU in user space (Python), describe_result()
# says how to lower it: a larger batch, or --sqpoll (x86-64 only).
PYTHON_SHARE_HINT = 0.15
# ... and only for a run that sent and kept its CPU busy at least this share
# of its time: one that mostly waited (a paced path, a slow receiver) was not
# held back by Python, and its few ms of CPU make any share meaningless.
BUSY_SHARE = 0.5
# A drain after the run this long gets a note: the path held sends the socket had taken.
DRAIN_NOTE_S = 0.5


def describe_result(r: Result) -> List[str]:
    """The seed's line, then rate and CPU, then what REPORT_USAGE said."""
    # nr EAGAIN is always 0 for an io_uring row: without MSG_DONTWAIT a send the
    # socket cannot take yet is polled and retried, never failed (first_send()).
    lines = [f"tx={r.requests} ({r.bytes >> 20} MB) txc={r.notifications}, nr EAGAIN={r.eagain}"]
    rate = r.requests / r.seconds if r.seconds else 0.0
    lines.append(f"{r.proto} {family_name_label(r.family)} {r.size} B {r.mode} batch {r.batch}: "
                 f"{r.mb_per_s:.0f} MB/s {r.gbit_per_s:.2f} Gbit/s {rate:.0f} req/s in {r.seconds:.2f} s; "
                 f"cpu user {r.cpu_user_s:.2f} s sys {r.cpu_sys_s:.2f} s")
    if r.gso:
        n = segments_per_send(r.size, r.gso)      # 1 when -s fits one segment: no GSO needed
        lines.append(f"gso: {r.gso}-byte segments (UDP_SEGMENT), {n} datagram{'s' if n > 1 else ''} "
                     f"per send: {r.datagrams} datagrams in all")
    if r.mb_per_sys_s is not None:
        lines.append(f"the kernel's own rate: {r.mb_per_sys_s:.0f} MB/s per second of kernel CPU "
                     f"(sys), what the sends cost the kernel alone, without Python's share "
                     f"or time off the CPU")
    if r.zc_copied is not None and r.notifications:
        if r.zc_copied:
            lines.append(f"zero-copy: the kernel copied instead for {r.zc_copied} of {r.notifications} "
                         f"notifications (REPORT_USAGE). A receiver on this host (loopback, veth) always "
                         f"copies, and so does a path whose MTU fragments the packet.")
        else:
            lines.append(f"zero-copy: all {r.notifications} notifications report zero-copy (REPORT_USAGE)")
    elif r.mode.endswith(("zc", "zc_fixed")) and r.notifications:
        lines.append("zero-copy: this kernel cannot say whether it copied: its SEND_ZC refuses "
                     "REPORT_USAGE (Linux 6.2+, and the stable series that took it)")
    if r.failed and r.notifications:
        # txc > tx: a zero-copy send that fails (or is cancelled because the
        # one linked before it failed) still posts its notification.
        lines.append(f"note: txc counts the notifications of all {r.requests + r.failed} sends: the "
                     f"{r.requests} in tx and {r.failed} that failed or were cancelled after the error, "
                     f"which also post one")
    cpu = r.cpu_user_s + r.cpu_sys_s
    python_heavy = (r.mode not in SYSCALL_MODES and r.pool is None and r.requests
                    and cpu > BUSY_SHARE * r.seconds and r.cpu_user_s > PYTHON_SHARE_HINT * cpu)
    if python_heavy and "IORING_SETUP_SQPOLL" in r.setup:
        # Not Python's cost per batch: its poll of the CQ ring (SQPOLL_SPIN_NS).
        lines.append(f"note: --sqpoll: Python polled the CQ ring rather than sleep ({r.cpu_user_s:.2f} s "
                     f"of user CPU), so that the SQ thread never wakes it: this flow takes two cores")
    elif python_heavy:
        # --sqpoll only where the file allows it (x86-64): arm64 6.1 was told to try it, and refused it.
        sqpoll = ", or --sqpoll," if platform.machine() == "x86_64" else ""
        lines.append(f"note: Python took {100 * r.cpu_user_s / cpu:.0f}% of the CPU at batch {r.batch}: "
                     f"a larger -r{sqpoll} leaves more to the kernel "
                     f"(`sendzc.py bench --sweep` shows where batching stops paying)")
    if r.drain_s >= DRAIN_NOTE_S and not r.undrained:
        lines.append(f"note: after the run the kernel held the buffer {r.drain_s:.1f} s more, until the "
                     f"path (a shaping qdisc, a slow link or receiver) let go of sends it had taken: "
                     f"MB/s is the rate the socket took them at; a receiver's figure is the wire's")
    if r.undrained:
        lines.append(f"warning: {r.undrained} completions never came (waited {DRAIN_SECONDS:g} s): "
                     f"the payload buffer stays mapped until exit, as the kernel may still send from it")
    return lines + describe_pool(r)


def percentile(sorted_values: List[int], q: float) -> int:
    """The nearest-rank q-quantile (0 < q <= 1) of a sorted, non-empty list."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def lag_summary(lags_ns: List[int], pinned_max: int, r: "Result") -> dict:
    """The notification lag's JSON: min/p50/p99/max, the bytes pinned, the pool a server needs.

    A lag runs from the io_uring_enter() that submitted a request to the reaping
    of its F_NOTIF: how long the kernel held its buffer. At r's rate, rate x p99
    lag / buffer size buffers cover all but the slowest 1% of notifications.
    """
    lags = sorted(lags_ns)

    def ms(ns: int) -> float:
        return round(ns / 1e6, 3)
    lag = None if not lags else {"min": ms(lags[0]), "p50": ms(percentile(lags, 0.50)),
                                 "p99": ms(percentile(lags, 0.99)), "max": ms(lags[-1])}
    rate = r.bytes / r.seconds if r.seconds else 0.0
    needed = None if not lags else max(1, math.ceil(rate * percentile(lags, 0.99) / 1e9 / r.size))
    return {"lag_ms": lag, "lag_samples": len(lags), "pinned_max_bytes": pinned_max,
            "buffers_needed": needed}


def describe_pool(r: "Result") -> List[str]:
    """The notification lag and the pool it asks for: every request's with --pool, else a sample."""
    p, lag = r.pool, r.pool or r.notif_lag
    lines = []
    if lag and lag["lag_ms"]:
        ms, n = lag["lag_ms"], lag["buffers_needed"]
        which, had = ((f"all {p['lag_samples']} requests", f"this run had {p['buffers']}") if p else
                      (f"sampled: the last request of {lag['lag_samples']} batches",
                       "this run sent every request from one unchanging buffer"))
        lines = [f"notification lag (submission to F_NOTIF, {which}): min {ms['min']:.3f} ms, "
                 f"p50 {ms['p50']:.3f} ms, p99 {ms['p99']:.3f} ms, max {ms['max']:.3f} ms; "
                 f"at most {lag['pinned_max_bytes'] >> 10} KiB pinned in flight",
                 f"pool: at {r.mb_per_s:.0f} MB/s and a p99 lag of {ms['p99']:.3f} ms, a zero-copy server "
                 f"needs {n} buffer{'s' if n != 1 else ''} of {r.size} B (rate x p99 lag / buffer size); "
                 f"{had}"]
    if p and p["break_contract"]:
        lines.append(f"warning: --break-contract: {p['rewritten_early']} buffers were rewritten as soon "
                     f"as their send's result (F_MORE) came, before their notification (F_NOTIF): "
                     f"the rule broken is \"a zero-copy buffer is the kernel's until its F_NOTIF\"; "
                     f"packets still queued may carry the later stamp (`sendzc.py rx --pool` finds them)")
    return lines


def json_doc(params: Optional[dict], results: list, extra: Optional[dict] = None) -> dict:
    """The --json document, printed at once; error: the first row's, unless extra says.

    At most once a run: main() prints one with no rows for a run that ends
    before any (a refusal), so a --json run prints exactly one document.
    """
    JSON_OUT.made = True
    doc = {"tool": "sendzc", "version": VERSION, "kernel": platform.release(),
           "host": socket.gethostname(), "params": params, "rows": [r.row() for r in results],
           "error": next((r.error for r in results if r.error), None)}
    doc.update(extra or {})
    return doc


class JSON_OUT:
    """Whether this run has made its --json document (json_doc): a namespace, never instantiated."""
    made = False


# --- Sockets -----------------------------------------------------------------

SOCK_TYPES = {"udp": (socket.SOCK_DGRAM, 0), "tcp": (socket.SOCK_STREAM, 0),
              "raw": (socket.SOCK_RAW, IPPROTO_EGP)}


def host_port(host: str, port: int) -> str:
    """host:port, with an IPv6 address in brackets ([2001:db8::1]:8000) as URLs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def family_name(family: int) -> str:
    return "ipv6" if family == socket.AF_INET6 else "ipv4"


def family_name_label(name: str) -> str:
    return name.replace("ip", "IP")


# How long a TCP connect() may take. Linux itself gives up only after
# net.ipv4.tcp_syn_retries (6: 127 s) of unanswered SYNs; a peer that has not
# answered in this long (3 SYNs: at 0, 1 and 3 s) is not going to take data.
CONNECT_SECONDS = 5.0


def open_tx_socket(proto: str, family: int, addr: str, port: int) -> socket.socket:
    """The seed's do_setup_tx(): a socket, a 2 MiB send buffer (UDP, raw), connect()."""
    sock_type, ipproto = SOCK_TYPES[proto]
    try:
        sock = socket.socket(family, sock_type, ipproto)
    except PermissionError:
        raise Fatal("raw: a raw socket needs CAP_NET_RAW: run as root, "
                    "`setcap cap_net_raw+ep` on the python binary, or send udp") from None
    try:
        if proto != "tcp":
            # Not for TCP: a fixed SO_SNDBUF turns off send buffer autotuning
            # (tcp_wmem); fixed at 2 MiB the sender waited for room and ran
            # at ~0.6x liburing's send-zerocopy, which sets none.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        connect_bounded(sock, (addr, 0 if proto == "raw" else port))
    except BaseException as e:
        sock.close()
        if isinstance(e, OSError):
            raise Fatal(connect_error(e, proto, addr, port)) from None
        raise
    return sock


def connect_bounded(sock: socket.socket, where: tuple) -> None:
    """connect(2), bounded by CONNECT_SECONDS and ended by Ctrl-C (socket.connect() is neither).

    A blocking connect() to a host that drops SYNs waits minutes, and Python
    restarts it after a signal (PEP 475), so Ctrl-C would go unheard: connect
    without blocking, then poll() POLL_MS at a time, looking at STOP between.
    """
    sock.setblocking(False)
    err = sock.connect_ex(where)
    if err == errno.EINPROGRESS:
        waiting = select.poll()
        waiting.register(sock, select.POLLOUT)
        give_up = time.monotonic() + CONNECT_SECONDS
        while not waiting.poll(POLL_MS):
            if STOP.requested:
                raise Fatal(f"interrupted while connecting to {host_port(*where[:2])}: "
                            f"nothing was sent", 130)
            if time.monotonic() >= give_up:
                err = errno.ETIMEDOUT
                break
        else:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
    sock.setblocking(True)


# --- The path's MTU, and UDP GSO ----------------------------------------------
#
# A datagram larger than the path's MTU leaves as IP fragments, and a
# fragmented zero-copy send is copied: the UDP checksum of a fragmented
# datagram covers every fragment, so no device can compute it, and the kernel
# lends pages only to a packet the device checksums (CHECKSUM_PARTIAL, in
# __ip_append_data()). A connected socket knows its path's MTU (IP_MTU,
# IPV6_MTU), so the sender can say so before it sends.
#
# UDP GSO (UDP_SEGMENT, 4.18) keeps large sends: the kernel cuts one send of
# up to 64 KB into segment-byte datagrams, each checksummed on its own, and
# the pages are still lent. As a socket option it applies to every send (SEND_ZC
# included); as a control message, to one sendmsg() (SENDMSG_ZC, as QUIC
# stacks send). A segment that does not fit the path, or more than
# UDP_MAX_SEGMENTS of them, is EINVAL; on some kernels a device that cannot
# checksum makes a GSO send fail with EIO.

GSO_AUTO = -1           # --gso auto: the largest datagram that crosses the path unfragmented
IPV6_FRAG_HEADER = 8    # <netinet/ip6.h>: struct ip6_frag, in every IPv6 fragment


def path_mtu(sock: socket.socket, family: int) -> int:
    """The MTU of the route a connected socket sends by (IP_MTU / IPV6_MTU): where fragmenting starts."""
    if family == socket.AF_INET6:
        return sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
    return sock.getsockopt(socket.IPPROTO_IP, IP_MTU)


def probe_path_mtu(family: int, addr: str, port: int) -> int:
    """The path MTU to addr: connect() a UDP socket, which only looks the route up (no packet leaves)."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((addr, port))
        except OSError as e:
            raise Fatal(connect_error(e, "udp", addr, port)) from None
        return path_mtu(sock, family)


def largest_datagram(mtu: int, family: int) -> int:
    """The most UDP payload one unfragmented packet carries on a path of this MTU."""
    return mtu - (IPV6_HEADER if family == socket.AF_INET6 else IPV4_HEADER) - UDP_HEADER


def ip_fragments(size: int, mtu: int, family: int) -> int:
    """How many IP packets a UDP datagram of size payload bytes leaves as (1: not fragmented)."""
    if size <= largest_datagram(mtu, family):
        return 1
    # Every fragment but the last carries a multiple of 8 bytes of the IP
    # payload (the UDP header and data): RFC 791, RFC 8200.
    room = mtu - (IPV6_HEADER + IPV6_FRAG_HEADER if family == socket.AF_INET6 else IPV4_HEADER)
    return -(-(size + UDP_HEADER) // (room // 8 * 8))


def segments_per_send(size: int, segment: int) -> int:
    """How many datagrams UDP GSO cuts a send of size bytes into (the last one may be shorter)."""
    return -(-size // segment)


def check_segments(size: int, segment: int, status: int = 2) -> None:
    """Refuse, in one line, more segments per send than the kernel takes (UDP_MAX_SEGMENTS)."""
    n = segments_per_send(size, segment)
    if n > UDP_MAX_SEGMENTS:
        raise Fatal(f"--gso {segment}: -s {size} would be {n} segments per send, more than the kernel "
                    f"takes (UDP_MAX_SEGMENTS, {UDP_MAX_SEGMENTS}): give --gso "
                    f"{-(-size // UDP_MAX_SEGMENTS)} or more, or -s {segment * UDP_MAX_SEGMENTS} or less",
                    status)


def resolve_gso(gso: int, size: int, mtu: int, family: int) -> int:
    """--gso's segment size on a path of this MTU (auto: the largest unfragmented datagram), or one line
    here rather than the kernel's EINVAL mid-run."""
    fits = largest_datagram(mtu, family)
    segment = fits if gso == GSO_AUTO else gso
    if segment > fits:
        raise Fatal(f"--gso {segment}: larger than this path allows: at MTU {mtu} an "
                    f"{family_name_label(family_name(family))} packet carries {fits} bytes of UDP "
                    f"payload at most: give --gso {fits} or less, or --gso auto")
    check_segments(size, segment, status=1)
    return segment


def set_udp_segment(sock: socket.socket, segment: int) -> None:
    """setsockopt(SOL_UDP, UDP_SEGMENT): every send on sock leaves as segment-byte datagrams."""
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, segment)
    except OSError as e:
        if e.errno == errno.ENOPROTOOPT:
            raise Fatal(NO_UDP_GSO_LINE) from None
        raise Fatal(oserror_line(e)) from None


def gso_cmsg(segment: int) -> ctypes.Array:
    """A UDP_SEGMENT control message for one sendmsg(): struct cmsghdr, then the u16 size."""
    buf = ctypes.create_string_buffer(socket.CMSG_SPACE(2))
    # cmsg_len (size_t), cmsg_level, cmsg_type (int); the data at CMSG_DATA(), 16 bytes in.
    struct.pack_into("@NiiH", buf, 0, socket.CMSG_LEN(2), SOL_UDP, UDP_SEGMENT, segment)
    return buf


def fragmentation_warning(proto: str, size: int, zc: bool, gso: int, mtu: int, family: int) -> Optional[str]:
    """The line said before a run whose UDP datagrams would be fragmented; None if they are not."""
    if proto != "udp" or gso:
        return None
    n = ip_fragments(size, mtu, family)
    if n == 1:
        return None
    fits = largest_datagram(mtu, family)
    copied = ", and the kernel copies every zero-copy send it fragments" if zc else ""
    return (f"warning: each {size}-byte datagram leaves as {n} IP fragments on this path (MTU {mtu})"
            f"{copied}: add --gso auto to send it as {fits}-byte UDP segments (UDP GSO), "
            f"or give -s {fits} or less")


# --- io_uring SEND, SEND_ZC, SENDMSG_ZC ---------------------------------------

# The sender's CQ has 4x --entries slots, and the kernel allows a CQ of at most
# 65536 (IORING_MAX_CQ_ENTRIES, without IORING_SETUP_CLAMP): the SQ's own limit,
# 32768, would have io_uring_setup answer EINVAL.
MAX_ENTRIES = 16384


@dataclass
class SendConfig:
    """What to send and how: the seed's options plus the io_uring variants."""
    proto: str = "udp"
    family: int = socket.AF_INET
    addr: str = ""
    port: int = DEFAULT_PORT
    size: int = SEED_MAX_PAYLOAD
    batch: int = 8               # -r: requests per io_uring_enter (the seed's nr_reqs)
    zc: bool = True              # SEND_ZC (else SEND, which copies)
    fixed_buf: bool = True       # IORING_RECVSEND_FIXED_BUF (registered buffer)
    sendmsg: bool = False        # SENDMSG_ZC instead of SEND_ZC
    flush: bool = False          # -f: wait for each batch's notifications
    entries: int = 512           # SQ ring size (the seed's io_uring_queue_init(512))
    seconds: float = 4.0
    trace: int = 0               # --trace N: print the first N requests' SQEs and CQEs
    sqpoll: bool = False         # --sqpoll: a kernel thread submits (IORING_SETUP_SQPOLL)
    flows: int = 1               # -n: parallel senders, each its own process, socket and ring
    gso: int = 0                 # --gso: UDP_SEGMENT size (GSO_AUTO until the path's MTU is known)
    mtu: int = IP_MAXPACKET      # --mtu: the private sink's MTU (no -D)
    path_mtu: Optional[int] = None   # the route's MTU, read after connect (UDP)
    sink: Optional[dict] = None  # no -D: the private sink it sends into (Sink's fields)
    pool: int = 0                # --pool N: the reference sender (section 6) from N buffers
    break_contract: bool = False  # --break-contract: ... rewriting each at its result, too early
    # TCP: the control connection a receiver took without answering (not sendzc
    # rx: msg_zerocopy -r accepts one connection only): the data goes over it.
    data_sock: Optional[socket.socket] = None

    @property
    def mode(self) -> str:
        return (("sendmsg" if self.sendmsg else "send") + ("_zc" if self.zc else "")
                + ("_fixed" if self.zc and self.fixed_buf else ""))


# --- Which opcodes this kernel has: IORING_REGISTER_PROBE (5.6), from <linux/io_uring.h>
IORING_REGISTER_PROBE = 8
IO_URING_OP_SUPPORTED = 1 << 0     # io_uring_probe_op.flags


class io_uring_probe_op(ctypes.Structure):
    _fields_ = [("op", u8), ("resv", u8), ("flags", u16), ("resv2", u32)]


class io_uring_probe(ctypes.Structure):
    """Header of IORING_REGISTER_PROBE's answer; ops[] follows (see Probe)."""
    _fields_ = [("last_op", u8), ("ops_len", u8), ("resv", u16), ("resv2", u32 * 3),
                ("ops", io_uring_probe_op * 0)]


assert (ctypes.sizeof(io_uring_probe_op), ctypes.sizeof(io_uring_probe)) == (8, 16)


@dataclass
class Probe:
    """What IORING_REGISTER_PROBE says the kernel supports (io_uring_get_probe)."""
    last_op: int
    supported: frozenset

    def has(self, op: int) -> bool:
        """Like liburing's io_uring_opcode_supported()."""
        return op in self.supported


def get_probe(ring: Ring) -> Probe:
    """io_uring_get_probe_ring(): which opcodes does this kernel support?"""
    n_ops = 256
    buf = (ctypes.c_uint8 * (ctypes.sizeof(io_uring_probe) + n_ops * ctypes.sizeof(io_uring_probe_op)))()
    io_uring_register(ring.fd, IORING_REGISTER_PROBE, ctypes.byref(buf), n_ops)
    head = io_uring_probe.from_buffer(buf)
    ops = (io_uring_probe_op * head.ops_len).from_buffer(buf, ctypes.sizeof(io_uring_probe))
    return Probe(head.last_op, frozenset(o.op for o in ops if o.flags & IO_URING_OP_SUPPORTED))


REQUIRED_OPS = {"send": (IORING_OP_SEND, "5.6"), "sendmsg": (IORING_OP_SENDMSG, "5.3"),
                "send_zc": (IORING_OP_SEND_ZC, "6.0"), "sendmsg_zc": (IORING_OP_SENDMSG_ZC, "6.1")}


def check_opcode(probe: Probe, mode: str) -> None:
    """Refuse, in one line, a mode whose opcode this kernel lacks.

    SEND_ZC first, for --sendmsg too: a kernel without it (before 6.0; Debian's 5.10
    showed it) lacks SENDMSG_ZC as well, and "drop --sendmsg" would send it to an
    opcode it does not have either. The copying twin (--no-zc) is there since 5.6.
    """
    base = mode.replace("_fixed", "")
    copying = base.replace("_zc", "")
    for need in (("send_zc", base) if base != copying else (base,)):
        op, since = REQUIRED_OPS[need]
        if not probe.has(op):
            fix = {"send_zc": f"use --no-zc ({OPCODE_NAMES[REQUIRED_OPS[copying][0]]}, which copies), "
                              f"or a newer kernel",
                   "sendmsg_zc": "drop --sendmsg (IORING_OP_SEND_ZC), or use a newer kernel"}
            raise Fatal(f"this kernel ({platform.release()}) has no {OPCODE_NAMES[op]} "
                        f"(Linux {since}+): {fix.get(need, 'use a newer kernel')}")


def kernel_opcodes() -> Probe:
    """IORING_REGISTER_PROBE's answer, from a small ring of its own: what a run may ask for."""
    try:
        with Ring(2, attempts=(0,)) as ring:
            return get_probe(ring)
    except OSError as e:
        raise Fatal(setup_error(e)) from None


def probe_report_usage() -> bool:
    """Does SEND_ZC accept IORING_SEND_ZC_REPORT_USAGE (6.2)? Ask the kernel, on a small ring of its own.

    Asked, never read from the version: stable series took the flag too (Debian
    12's 6.1.192 answers it). A SEND_ZC with the flag to an AF_UNIX socketpair: a
    kernel that knows the flag rejects the socket (-EOPNOTSUPP: no zero-copy on
    unix sockets), with F_MORE and then a notification; one that does not (6.0,
    and 6.1 before its stable series took it) rejects the flag (-EINVAL) without
    F_MORE and posts no notification: io_send_zc_prep() checked the flags before
    it allocated one.
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, Ring(2, attempts=SETUP_ATTEMPTS) as ring:
        sqe = io_uring_sqe()
        prep_send_zc(sqe, a.fileno(), probe_byte_addr(), 1, 0, IORING_SEND_ZC_REPORT_USAGE)
        ring.place(bytes(sqe))
        ring.submit_and_wait(1)
        res, flags = ring.peek()
        while flags and flags[0] & IORING_CQE_F_MORE and len(flags) < 2:
            ring.wait_cqes(2, 1.0)
            res, flags = ring.peek()
        ring.cq_advance(len(flags))
    return res[0] != -errno.EINVAL


_PROBE_BYTE = ctypes.create_string_buffer(1)   # what probes send from: one byte of our memory


def probe_byte_addr() -> int:
    return ctypes.addressof(_PROBE_BYTE)


TRACE_EXPLAINED = {
    "sqe": ["SQE: a request written into slot sq[i] of the submission array. The kernel",
            "will read it when io_uring_enter() runs with the tail past it. fd=fixed:0 is",
            "slot 0 of the registered files (our socket); FIXED_BUF's buf_index names the",
            "registered buffer; user_data comes back unchanged in every CQE it causes."],
    "enter": ["io_uring_enter(to_submit, min_complete): the kernel consumes to_submit SQEs",
              "(sq head moves up to our tail) and returns once min_complete CQEs are in the",
              "CQ ring (cq tail moves). tail - head is what one side has written and the",
              "other not yet read."],
    "entered": ["After the call: sq head == sq tail means every SQE was consumed (the slots",
                "are ours again); cq tail - cq head CQEs wait for us to read them."],
    "more": ["F_MORE: the send is done (res = bytes handed to the network stack), but a",
             "notification for this request will follow: the buffer is still the kernel's,",
             "its pages may sit in a packet queue. Do not change it yet."],
    "notif": ["F_NOTIF: the notification. The kernel has let go of the buffer (the last",
              "packet that pointed at it was freed): now it may be changed or reused. With",
              "REPORT_USAGE, res 0 means the pages really went out zero-copy; bit 31",
              "(IORING_NOTIF_USAGE_ZC_COPIED, reads as negative) means they did not: the",
              "kernel copied, or the send never used them (it failed, or was all copied)."],
    "done": ["No F_MORE: a copying SEND. The data was copied at submission, so the buffer",
             "was free again before this CQE was even posted; no notification follows."],
    "error": ["res < 0 is -errno: the send failed. A zero-copy send may still set F_MORE,",
              "and then its notification still comes."],
    "fast": ["From here on, batches go in whole and CQEs are judged in bulk (section 8)."],
}


class TraceVoice:
    """--trace's voice: each kind of step explained once, before its first line, then only shown."""

    def __init__(self, out, ring: Ring):
        self.out, self.ring = out, ring
        self.explained = set()            # the kinds whose words were printed already

    def say(self, kind: str, line: str) -> None:
        """One trace line, after TRACE_EXPLAINED's words for its kind if this is the first of it."""
        if kind not in self.explained:
            self.explained.add(kind)
            for text in TRACE_EXPLAINED[kind]:
                print(f"#   {text}", file=self.out)
        print(f"trace: {line}", file=self.out)

    def rings(self) -> str:
        """The four ring words as they stand: what io_uring_enter() moves, seen from our side."""
        ring = self.ring
        return (f"sq head={ring.sq_head} tail={ring.sq_tail} "
                f"cq head={ring.cq_head} tail={ring.cq_tail}")


# --- What the tool's senders ask of Part I's Ring and BulkSender
# Setup flags to try, best first. EINVAL from io_uring_setup means "a flag I
# do not know": drop to the next set, as liburing's callers do by hand.
SETUP_ATTEMPTS = (
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_NO_SQARRAY,  # 6.6
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,                            # 6.1
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,                             # 6.0
    IORING_SETUP_COOP_TASKRUN,                                                          # 5.19
    0,
)
# With SQPOLL the kernel's thread is the only submitter, so SINGLE_ISSUER
# holds; DEFER_TASKRUN does not combine with it (no task of ours to defer to).
SQPOLL_ATTEMPTS = (IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_NO_SQARRAY, IORING_SETUP_SINGLE_ISSUER, 0)
SQ_THREAD_IDLE_MS = 1000   # how long the SQ thread spins with nothing to do before it sleeps

# The longest a sender waits after its run for the notifications still owed
# (the drain). A TCP peer that stopped acknowledging could hold them for
# minutes; past this the buffer stays mapped until exit instead.
DRAIN_SECONDS = 5.0


# A sender's CQ ring holds this many CQEs per SQ entry: room for a result and a
# notification of every request in flight, and for notifications that lag.
CQ_ENTRIES_PER_SQ = 4


def send_ring(cfg: SendConfig, sock: socket.socket, buffers: List[Tuple[int, int]],
              stack: ExitStack, **ring_args) -> Tuple[Ring, bool]:
    """A sender's ring, set up in the order liburing's example does and torn down by stack; and
    whether its SEND_ZC may ask IORING_SEND_ZC_REPORT_USAGE.

    The ring (CQ CQ_ENTRIES_PER_SQ times the SQ), the socket as registered file 0, the buffers
    (addr, length) as registered buffers 0.. (none: no FIXED_BUF), the ring
    fd registered. Each refusal is one line (Fatal), the probe's ring's too.
    """
    ring_args.setdefault("attempts", SETUP_ATTEMPTS)
    try:
        ring = Ring(cfg.entries, cq_entries=CQ_ENTRIES_PER_SQ * cfg.entries, **ring_args)
    except OSError as e:
        raise Fatal(setup_error(e)) from None
    stack.callback(ring.close)
    check_opcode(get_probe(ring), cfg.mode)
    try:
        ring.register_files([sock.fileno()])
        if buffers:
            ring.register_buffers(buffers)
    except OSError as e:
        raise Fatal(register_error(e, sum(length for _, length in buffers))) from None
    ring.register_ring_fd()
    try:
        return ring, cfg.zc and probe_report_usage()
    except OSError as e:
        raise Fatal(setup_error(e)) from None


def check_sqpoll(cfg: SendConfig) -> None:
    """Refuse --sqpoll off x86-64 in one line."""
    if cfg.sqpoll and platform.machine() != "x86_64":
        raise Fatal("--sqpoll is x86-64 only: the SQ thread reads our tail concurrently, and "
                    "ordering the SQE stores before it needs a store barrier Python cannot "
                    "issue on arm64; run without --sqpoll")


# --sqpoll's submit and peek: the SQ thread submits, we mostly only read the rings.
# How long the reaper polls the CQ ring before it sleeps in io_uring_enter. A
# sleeper costs the SQ thread, the one CPU doing all of this flow's kernel
# work: every CQE it posts runs the sleeper's wake check, and a wake sends an
# IPI to our CPU. Polling, we leave it nothing but the sends, and SQPOLL
# outruns C's plain sender on an idle host (README, "Speed", has the figures);
# Python takes the other core for it, which the run's user CPU shows. A
# batch's CQEs come within ~100 us; after 1 ms without them the path is slow
# (a shaping qdisc, a TCP peer that stopped reading), and sleeping costs
# nothing there.
SQPOLL_SPIN_NS = 1_000_000


def sqpoll_submit_and_peek(ring: Ring, wait_nr: int) -> Tuple[List[int], int]:
    """Ring.submit_and_peek() for an IORING_SETUP_SQPOLL ring: mostly no syscall at all.

    The kernel's SQ thread, on another CPU, watches sq.tail and submits
    whatever we place; we store the tail, wake the thread if it has set
    IORING_SQ_NEED_WAKEUP (IORING_ENTER_SQ_WAKEUP), then poll cq.tail until
    wait_nr CQEs are ready, for at most SQPOLL_SPIN_NS; only then do we
    enter to sleep for them (bounded, as submit_and_peek's wait).

    Memory ordering, the part C gets from barriers: the thread reads our
    tail concurrently, so the SQE bytes must be visible before the tail.
    x86-64 keeps stores in order and loads in order (TSO), so writing the
    SQEs then the tail is enough there, and the CQEs we read after cq.tail
    are those it covers; arm64 needs a release and an acquire Python cannot
    issue, which is why --sqpoll is x86-64 only. A store then a load (the
    tail, then NEED_WAKEUP) may still pass each other even on x86: the
    thread could fall asleep without seeing our tail; then no CQE comes,
    the poll runs out, and the sleeping enter's SQ_WAKEUP wakes it: a
    delay, never a hang.
    """
    words, tail_i, head = ring._cq_words, ring._cq_tail_i, ring.cq_head
    ring._sq_words[ring._sq_tail_i] = ring.sq_tail
    if ring._sq_words[ring._sq_flags_i] & IORING_SQ_NEED_WAKEUP:     # asleep: wake it, wait for nothing
        check_enter(_syscall(NR_io_uring_enter, ring.enter_fd, 0, 0, ring._peek_flags | IORING_ENTER_SQ_WAKEUP,
                             ring._wait_ref, ring._wait_size))
    clock = time.perf_counter_ns
    give_up = clock() + SQPOLL_SPIN_NS
    tail = words[tail_i]
    while (tail - head) & U32 < wait_nr and clock() < give_up:     # poll: the kernel moves cq.tail
        tail = words[tail_i]
    if (tail - head) & U32 < wait_nr:
        check_enter(_syscall(NR_io_uring_enter, ring.enter_fd, 0, wait_nr, ring._peek_flags | IORING_ENTER_SQ_WAKEUP,
                             ring._wait_ref, ring._wait_size))
        tail = words[tail_i]
    return ring._peek_bulk(tail)


# liburing's SENDMSG preps (section 5's kind), for --sendmsg.
def prep_sendmsg(sqe: io_uring_sqe, fd: int, msg_addr: int, msg_flags: int) -> None:
    """io_uring_prep_sendmsg(): sendmsg(2) as a request, msg_addr a struct msghdr; the kernel copies."""
    prep_rw(sqe, IORING_OP_SENDMSG, fd, msg_addr, 1, 0)
    sqe.msg_flags = msg_flags


def prep_sendmsg_zc(sqe: io_uring_sqe, fd: int, msg_addr: int, msg_flags: int) -> None:
    """io_uring_prep_sendmsg_zc(): prep_sendmsg() with the zero-copy opcode; two CQEs follow."""
    prep_sendmsg(sqe, fd, msg_addr, msg_flags)
    sqe.opcode = IORING_OP_SENDMSG_ZC


def prep_sendmsg_zc_fixed(sqe: io_uring_sqe, fd: int, msg_addr: int, msg_flags: int,
                          buf_index: int) -> None:
    """io_uring_prep_sendmsg_zc_fixed() (6.15): the iovecs lie in a registered buffer."""
    prep_sendmsg_zc(sqe, fd, msg_addr, msg_flags)
    sqe.ioprio |= IORING_RECVSEND_FIXED_BUF
    sqe.buf_index = buf_index


# What a batch costs (README, "Speed", has the measurements): Python spends ~1.5 us
# on a batch, whatever its size (a ctypes call into io_uring_enter is a third
# of it); the kernel ~2 us on each 64 KB SEND_ZC. So Python's share is ~9% of
# a batch of 8 and ~2% of a batch of 64 (bench --sweep measures it on any host).
class UringSender(BulkSender):
    """The seed's do_tx(): BulkSender, set up from a SendConfig, traced and reported.

    Beside the hot loop, a general loop (run_general) for what it does not
    take: SQPOLL, -f, and whatever the hot loop hands over.
    """

    def __init__(self, cfg: SendConfig, sock: socket.socket, payload: Payload, stack: ExitStack):
        self.cfg = cfg
        # --gso: SEND and SEND_ZC carry no control message, so the socket
        # option it is; SENDMSG_ZC carries it per request, as QUIC stacks do.
        if cfg.gso and not cfg.sendmsg:
            set_udp_segment(sock, cfg.gso)
        check_sqpoll(cfg)
        sqpoll = dict(flags=IORING_SETUP_SQPOLL, attempts=SQPOLL_ATTEMPTS,
                      sq_thread_idle=SQ_THREAD_IDLE_MS) if cfg.sqpoll else {}
        buffers = [(payload.addr, payload.length)] if cfg.fixed_buf and cfg.zc else []
        ring, usage = send_ring(cfg, sock, buffers, stack, **sqpoll)
        # --sendmsg: SENDMSG_ZC; cmsg, a control message for every request (--gso).
        self.sendmsg, self.cmsg = cfg.sendmsg, gso_cmsg(cfg.gso) if cfg.gso and cfg.sendmsg else None
        self._msgs: List[ctypes.Structure] = []   # SENDMSG's msghdrs must live as long as we do
        super().__init__(ring, payload, cfg.size, cfg.batch, cfg.zc, cfg.fixed_buf,
                         cfg.proto == "tcp", usage)
        self.flush = cfg.flush      # -f: each batch waits for its notifications (run_general)
        self.run_of_batches: Optional[memoryview] = None     # place_batches() builds it
        self.trace_out = sys.stdout
        self.deadline_ns: Optional[int] = None     # -n: the flows' common deadline (run_flows)
        self.started_ns = 0                        # perf_counter_ns when run() started

    def run(self, on_tick: Optional[Callable[[int, int], None]] = None, tick_ns: int = 0) -> Result:
        """Send for cfg.seconds (--trace first), drain, and return the kernel's totals."""
        cfg = self.cfg
        result = Result(cfg.mode, cfg.proto, cfg.size, cfg.batch, family_name(cfg.family),
                        setup=self.ring.setup_flags, gso=cfg.gso or None)
        meter = Meter()
        self.started_ns = meter.t0    # -i: where the interval lines start counting
        books = self.begin(self.deadline_ns or meter.t0 + int(cfg.seconds * 1e9), on_tick, tick_ns)
        if cfg.trace:                 # inside the timed run: the trace's sends count, so must its time
            books.slow, books.inflight, books.due = self.trace(cfg.trace, self.trace_out, books.deadline)
            books.placed = books.slow.results + books.inflight
        self.send()
        meter.stop(result)            # the rate covers sending; the drain is not timed
        self.drain(DRAIN_SECONDS)
        slow = books.slow
        result.requests = books.whole + slow.ok
        result.bytes = books.whole * cfg.size + slow.bytes
        result.eagain, result.failed = slow.eagain, slow.failed
        result.notifications = books.notifs + slow.notifs
        result.undrained, result.drain_s = books.due + books.inflight, books.waited
        if self.report_usage:
            result.zc_copied = books.copied + slow.copied
        if books.lags_ns:
            result.notif_lag = lag_summary(books.lags_ns, books.pinned_max, result)
        result.interrupted = STOP.requested       # during the run, or during the drain
        result.error = run_error(cfg, result, slow.error, books.entered, books.waited,
                                 gave_up=books.stopped and STOP.hurry, held_back=books.held_back)
        return result

    def prep(self, sqe: io_uring_sqe, phase: int, user_data: int) -> None:
        """BulkSender.prep(), rewritten as a SENDMSG(_ZC) with --sendmsg: a msghdr that may carry cmsg."""
        super().prep(sqe, phase, user_data)
        if not self.sendmsg:
            return
        iov = iovec(sqe.addr, sqe.len)
        msg = msghdr(msg_iov=ctypes.pointer(iov), msg_iovlen=1)
        if self.cmsg is not None:
            msg.msg_control, msg.msg_controllen = ctypes.addressof(self.cmsg), len(self.cmsg)
        self._msgs += [iov, msg]
        msg_flags, usage, flags = sqe.msg_flags, sqe.ioprio & IORING_SEND_ZC_REPORT_USAGE, sqe.flags
        if not self.zc:
            prep_sendmsg(sqe, 0, ctypes.addressof(msg), msg_flags)
        elif self.fixed:
            prep_sendmsg_zc_fixed(sqe, 0, ctypes.addressof(msg), msg_flags, 0)
        else:
            prep_sendmsg_zc(sqe, 0, ctypes.addressof(msg), msg_flags)
        sqe.ioprio |= usage
        sqe.flags, sqe.user_data = flags, user_data

    def send(self) -> None:
        """(1)-(6) until the deadline, STOP or an error: the hot loop if it can, else the general one."""
        if self.flush or self.ring.sqpoll or not self.run_hot():
            self.run_general()

    def run_general(self) -> None:
        """The loop for what the hot loop does not take: SQPOLL, -f, and its hand-overs.

        Per batch: the clock, one place(), one submit_and_peek() (submit, wait
        at most ENTER_WAIT_NS, then the ready CQEs' flags and res sum),
        judge(), one cq_advance(), a look at sq.flags.
        """
        ring, books, size = self.ring, self.books, self.size
        if books.entered is not None or books.slow.error:
            return
        submit_and_peek = (functools.partial(sqpoll_submit_and_peek, ring) if ring.sqpoll
                           else ring.submit_and_peek)
        ahead, due_max = self.general_window()
        clock, deadline, stop, slow = time.perf_counter_ns, books.deadline, STOP, books.slow
        judge, peek_res, cq_advance = self.judge, ring.peek_res, ring.cq_advance
        place_batches = self.place_batches
        inflight, due, placed = books.inflight, books.due, books.placed
        sample_t = sample_target = 0          # the lag sample under way, as in run_hot()
        while True:
            now = clock()                     # -t: before every (bounded) wait
            if now >= deadline or stop.requested or slow.error or books.held_back:
                break
            if inflight <= ahead:
                if now >= books.next_tick:
                    books.on_tick(books.whole * size + slow.bytes, books.whole + slow.ok)
                    books.next_tick += books.tick_ns
                if due <= due_max:
                    n = place_batches(inflight, placed, ahead)      # (1)
                    inflight, placed = inflight + n, placed + n
                    if not inflight:
                        continue            # nothing to wait for: the head is on its way
                if self.zc and not sample_t and inflight:
                    # (5) time the newest request: until the notifications of
                    # every request placed so far have come (in order).
                    sample_t, sample_target = now, books.notifs + slow.notifs + due + inflight
                    books.pinned_max = max(books.pinned_max, (due + inflight) * size)
            try:                                # (2) submit and wait, (3) peek CQEs
                flags, res_sum = submit_and_peek((inflight >> 1 if ahead else inflight) or 1)
            except OSError as e:
                # EINTR (a signal) or ETIME (ENTER_WAIT_NS passed with no CQE:
                # a TCP peer that stopped reading): look at the clock again.
                if e.errno not in (errno.EINTR, errno.ETIME):
                    books.entered = e
                    break
                continue
            results, owed = judge(flags, res_sum, peek_res)      # (4), (5)
            inflight -= results
            due += owed
            cq_advance(len(flags))                              # (6)
            books.held_back = ring.cq_held_back
            if sample_t and books.notifs + slow.notifs >= sample_target:
                books.lags_ns.append(clock() - sample_t)
                sample_t = 0
            assert inflight >= 0 and due >= 0, "more CQEs than requests: accounting is broken"
        books.inflight, books.due, books.placed = inflight, due, placed

    def general_window(self) -> Tuple[int, int]:
        """run_general()'s (ahead, due_max): how far SQPOLL runs ahead, how many notifications may be owed.

        In flight: one batch, as in the seed, unless SQPOLL: its thread
        submits on its own CPU, so we keep the SQ full and reap once half of
        what is in flight has completed (sqpoll_submit_and_peek() polls for
        it; waiting per batch cost the SQ thread a third of its rate). Not a
        stream: batches are not linked to each other, and the SQ thread cuts
        a chain wherever its submission ends; nor -f, which waits per batch.
        """
        ring, per_batch = self.ring, self.per_batch
        ahead = ring.sq_entries - per_batch if ring.sqpoll and not (self.stream or self.flush) else 0
        due_max = 0 if self.flush else ring.cq_entries - 2 * (ahead + per_batch)   # as in run_hot()
        return ahead, due_max

    def place_batches(self, inflight: int, placed: int, ahead: int) -> int:
        """(1) for run_general(): a stream's next batch, or as many datagram batches as fit; how many requests.

        Datagram batches are alike, so several go in one slice copy, as many
        as keep `ahead` in flight and the SQ has room for (the SQ thread
        commits sq.head only after its whole submission).
        """
        ring, per_batch = self.ring, self.per_batch
        if self.stream:                     # the batch starts where the last one ended
            ring.place(self.batch_sqes(placed * self.size % self.buf.period))
            return per_batch
        if self.run_of_batches is None:
            self.run_of_batches = memoryview(self.batch_sqes(0) * (ring.sq_entries // per_batch))
        n = min((ahead - inflight) // per_batch * per_batch + per_batch,
                ring.sq_space_left() // per_batch * per_batch)
        ring.place(self.run_of_batches[:n << SQE_SHIFT])
        return n

    def trace(self, n: int, out, deadline: int) -> Tuple[Tally, int, int]:
        """Send the first n requests slowly (user_data = each one's number), saying aloud each step.

        Returns the tally, which run() adds to its totals (these are real
        sends), and the results and notifications still outstanding if it
        stopped early: at an error, Ctrl-C, or the run's deadline.
        """
        voice = TraceVoice(out, self.ring)
        total = Tally()
        seq = count = due = 0
        # Part of the timed run, so -t ends it too: a peer that stops taking
        # data must not hold it for ever, nor must Ctrl-C go unheard.
        late = False
        while seq < n and not total.error and not STOP.requested and not late and not self.books.held_back:
            count = min(self.cfg.batch, n - seq)
            seq = self.trace_place(seq, count, total.bytes, voice)
            count, due, late = self.trace_reap(count, deadline, total, voice)
        total.due = 0
        if not (total.error or STOP.requested or late):
            voice.say("fast", f"{seq} traced requests done; the run goes on at full speed, untraced")
        return total, count, due          # what is still out: run()'s drain waits for it

    def trace_place(self, seq: int, count: int, sent: int, voice: "TraceVoice") -> int:
        """(1) for trace(): count SQEs one by one, each shown as the kernel will read it; the last seq.

        A stream's batch is linked (IOSQE_IO_LINK) so its sends reach the
        socket in order; each starts where the bytes before it ended.
        """
        cfg, ring = self.cfg, self.ring
        sqe = io_uring_sqe()
        for j in range(count):
            seq += 1
            phase = (sent + j * cfg.size) % PATTERN_LEN if self.stream else 0
            self.prep(sqe, phase, seq)
            if self.stream and j < count - 1:
                sqe.flags |= IOSQE_IO_LINK
            slot = ring.sq_tail & ring.sq_mask
            ring.place(bytes(sqe))
            voice.say("sqe", "SQE " + describe_sqe(slot, sqe))
        return seq

    def trace_reap(self, count: int, deadline: int, total: Tally, voice: "TraceVoice") -> Tuple[int, int, bool]:
        """(2)+(3) for trace(): enter until the batch's results and notifications are all in, showing each CQE.

        Like io_uring_submit_and_wait() then io_uring_for_each_cqe(), aloud.
        Adds what came to total; returns the results and notifications still
        out, and whether the run's deadline came first.
        """
        cfg, ring = self.cfg, self.ring
        due = 0
        wait = count
        while wait:
            left = (deadline - time.perf_counter_ns()) / 1e9
            if STOP.requested:
                break
            if left <= 0:                     # -t: run()'s drain waits for the rest
                return count, due, True
            voice.say("enter", f"io_uring_enter(to_submit={(ring.sq_tail - ring.sq_head) & U32}, "
                               f"min_complete={wait}) before: {voice.rings()}")
            try:
                ring.wait_cqes(wait, left)    # submits too; EXT_ARG bounds the wait
            except InterruptedError:
                continue                      # Ctrl-C: the loop looks at STOP
            ready = ring.cq_ready()
            voice.say("entered", f"  returned; after: {voice.rings()} ({ready} CQEs ready)")
            user_data = ring.peek_user_data(ready)
            res, flags = ring.peek()
            for k in range(ready):
                kind = ("notif" if flags[k] & IORING_CQE_F_NOTIF else
                        "error" if res[k] < 0 else
                        "more" if flags[k] & IORING_CQE_F_MORE else "done")
                voice.say(kind, "CQE " + describe_cqe((ring.cq_head + k) & ring.cq_mask,
                                                      user_data[k], res[k], flags[k]))
            ring.cq_advance(ready)
            self.books.held_back = self.books.held_back or ring.cq_held_back
            t = judge_each(res, flags, cfg.size, cfg.zc)
            total.add(t)
            due += t.due
            count -= t.results
            wait = count + due          # here we do wait for the notifications
        return count, due, False


def run_flows(cfg: SendConfig, trace_out=None) -> Tuple[List[Result], Result]:
    """-n N: N senders at once, each a fork()ed process with its own socket, payload and ring.

    Processes, not threads: the GIL runs one thread's Python at a time. Each
    child is in a process group of its own and the parent relays each Ctrl-C,
    so a child hears it exactly once. All set up, then get one common deadline
    (CLOCK_MONOTONIC is one clock for all). The total's rate is all bytes over
    the first flow's start to the last one's end; its CPU, the flows' sum.
    """
    out_r, out_w = os.pipe()              # children -> parent: ready, result, or a failure
    go_r, go_w = os.pipe()                # parent -> children: the common deadline
    pids: Dict[int, int] = {}             # pid -> flow number, until reaped
    sys.stdout.flush()                    # or the children would print it again at exit
    sys.stderr.flush()
    finished = False
    try:
        fork_flows(cfg, trace_out or sys.stdout, pids, (out_r, go_w), (out_w, go_r))
        os.close(out_w)
        os.close(go_r)
        out_w = go_r = -1
        done = start_flows_together(cfg, flow_inbox(out_r, pids, len(pids)), go_w, len(pids))
        finished = True
    finally:
        end_flows(pids, (out_r, out_w, go_r, go_w), kill=not finished)
    failed = [m for m in done if m[0] == "fatal"]
    if failed:
        raise Fatal(*failed[0][2:])
    return sum_flows(cfg, done)


def fork_flows(cfg: SendConfig, trace_out, pids: Dict[int, int], parent_ends: Tuple[int, int],
               child_ends: Tuple[int, int]) -> None:
    """fork() a child per flow into pids, each in a process group of its own (fewer if a signal came)."""
    for i in range(cfg.flows):
        pid = fork_flow(cfg, i)
        if pid < 0:
            break
        if pid == 0:                      # the child: never returns
            for fd in parent_ends:
                os.close(fd)
            flow_child(i, cfg, trace_out, *child_ends)
        try:
            os.setpgid(pid, pid)          # as the child does itself: whichever runs first
        except OSError:
            pass                          # the child has already done it
        pids[pid] = i


def start_flows_together(cfg: SendConfig, inbox: Iterator[List[tuple]], go_w: int, n: int) -> List[tuple]:
    """Once all n flows are ready, one deadline for all; each flow's last message ("result" or "fatal")."""
    done = next(inbox)                    # "ready" or "fatal" from each
    if all(m[0] == "ready" for m in done):
        deadline = time.perf_counter_ns() + int(cfg.seconds * 1e9)
        os.write(go_w, struct.pack("q", deadline) * n)   # 8 B a child: far below a pipe's room
        done = next(inbox)                # "result" or "fatal" from each
    return done


def end_flows(pids: Dict[int, int], fds: Tuple[int, ...], kill: bool) -> None:
    """run_flows()' teardown, on every path: kill the children if it failed, close the pipes, reap each child."""
    for pid in pids if kill else ():      # leaving by an exception (fork's EAGAIN, a
        try:                              # third Ctrl-C): before the pipes close, so
            os.kill(pid, signal.SIGKILL)  # no child writes into a closed one
        except ProcessLookupError:
            pass                          # (the kernel tears down its ring and sends)
    for fd in fds:
        if fd >= 0:
            os.close(fd)                  # a child still waiting for go reads EOF and leaves
    for pid in list(pids):
        os.waitpid(pid, 0)                # every child reported (or was killed): reap it


def sum_flows(cfg: SendConfig, done: List[tuple]) -> Tuple[List[Result], Result]:
    """The flows' results in flow order, and their total: counts and CPU summed, time first start to last end."""
    results = [m[2] for m in sorted(done, key=lambda m: m[1])]
    total = Result(cfg.mode, cfg.proto, cfg.size, cfg.batch, family_name(cfg.family),
                   setup=results[0].setup, gso=cfg.gso or None)
    for name in ("requests", "bytes", "notifications", "eagain", "undrained", "failed",
                 "cpu_user_s", "cpu_sys_s"):
        setattr(total, name, sum(getattr(r, name) for r in results))
    copied = [r.zc_copied for r in results if r.zc_copied is not None]
    total.zc_copied = sum(copied) if copied else None
    total.error = next((r.error for r in results if r.error), None)
    total.seconds = (max(m[4] for m in done) - min(m[3] for m in done)) / 1e9
    total.interrupted = STOP.requested or any(r.interrupted for r in results)
    return results, total


def fork_flow(cfg: SendConfig, i: int) -> int:
    """fork() for flow i, unless a signal came (Ctrl-C, SIGTERM: those forked run and report)."""
    if STOP.requested:
        if i:
            return -1
        raise Fatal(f"interrupted ({signal_label(STOP.signum)}) while starting: nothing was sent", 130)
    try:
        return os.fork()
    except BlockingIOError:               # EAGAIN: RLIMIT_NPROC, or the cgroup's pids.max
        raise Fatal(fork_error(cfg.flows, i)) from None


def flow_child(i: int, cfg: SendConfig, trace_out, out_fd: int, go_fd: int) -> None:
    """One flow of run_flows(), in the forked child: set up, wait for go, send, report, _exit."""
    code = 0
    try:
        try:
            os.setpgid(0, 0)              # out of the terminal's group: Ctrl-C comes via the parent
            with ExitStack() as stack:
                sock = stack.enter_context(tx_socket(cfg) if i == 0 else
                                           open_tx_socket(cfg.proto, cfg.family, cfg.addr, cfg.port))
                payload = Payload(cfg.size, cfg.gso)
                stack.callback(payload.close)
                sender = UringSender(cfg, sock, payload, stack)
                trace_out = sender.trace_out = WholeLines(trace_out)
                flow_message(out_fd, ("ready", i))
                go = os.read(go_fd, 8)
                if len(go) < 8:           # the parent gave up (another flow failed to start)
                    os._exit(0)
                sender.deadline_ns = struct.unpack("q", go)[0]
                result = sender.run()
                message = ("result", i, result, sender.started_ns,
                           sender.started_ns + int(result.seconds * 1e9))
        except Fatal as e:
            message = ("fatal", i, str(e), e.status)
        except OSError as e:
            message = ("fatal", i, oserror_line(e), 1)
        except KeyboardInterrupt:         # a third Ctrl-C: stop at once, as main() does
            message = ("fatal", i, "interrupted three times: stopped at once", 130)
        trace_out.flush()
        flow_message(out_fd, message)
    except BaseException:                 # a bug: its traceback, then out
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)                    # not exit(): atexit, a test runner's teardown are the parent's


class WholeLines:
    """A flow's trace stream: each whole line in one write(), so the flows' lines never interleave."""

    def __init__(self, out):
        self.out, self.pending = out, ""

    def write(self, text: str) -> int:
        self.pending += text              # print() writes a line and its newline apart
        if "\n" in self.pending:
            whole, _, self.pending = self.pending.rpartition("\n")
            self.out.flush()
            os.write(self.out.fileno(), (whole + "\n").encode())
        return len(text)

    def flush(self) -> None:
        if self.pending:
            os.write(self.out.fileno(), self.pending.encode())
            self.pending = ""


def flow_message(fd: int, message: tuple) -> None:
    """One message to the parent: a length, then the pickle, in ONE write.

    POSIX makes a pipe write of at most PIPE_BUF bytes atomic, so the children share one
    pipe without interleaving. A result pickles to under 1 KB (no -i with -n).
    """
    import pickle
    data = pickle.dumps(message)
    frame = struct.pack("I", len(data)) + data
    assert len(frame) <= select.PIPE_BUF, "a flow's message must fit one atomic pipe write"
    os.write(fd, frame)


def flow_inbox(fd: int, pids: Dict[int, int], n: int) -> Iterator[List[tuple]]:
    """The parent's end of run_flows()' pipe: yields a message from each of the n flows, as often
    as asked, and relays each Ctrl-C to the children meanwhile."""
    import pickle
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    buf, relayed, got = b"", 0, []        # relayed: Ctrl-Cs passed on to the children so far
    while True:
        while relayed < STOP.requested + STOP.hurry:   # each Ctrl-C, once, to every child still running
            relayed += 1
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from("I", buf)[0]:
            size = struct.unpack_from("I", buf)[0]
            got.append(pickle.loads(buf[4:4 + size]))
            buf = buf[4 + size:]
        if len(got) >= n:
            yield got
            got = []
        elif poller.poll(POLL_MS):
            chunk = os.read(fd, 1 << 16)      # the pipe's whole default capacity
            if not chunk:                     # every child has closed the pipe: some died mute
                flow = min(set(range(n)) - {m[1] for m in got})
                pid = next(p for p, i in pids.items() if i == flow)
                del pids[pid]
                status = os.waitpid(pid, 0)[1]    # not long: it closed the pipe, so it has ended
                how = (f"killed by {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                       else f"exit status {os.WEXITSTATUS(status)}")
                raise Fatal(f"flow {flow} ended without a word ({how}): run it alone (without -n) to see why")
            buf += chunk


def run_reference(cfg: SendConfig, sock: socket.socket, stack: ExitStack, count: int = 0) -> Result:
    """--pool N: the reference sender of section 6, set up as UringSender is; a Result like run()'s.

    count > 0 sends exactly that many requests, whatever cfg.seconds says (the differential test).
    """
    pool = Pool(cfg.pool, cfg.size)
    stack.callback(pool.close)                  # after the ring (below) has let go of it
    ring, usage = send_ring(cfg, sock, pool.iovecs() if cfg.fixed_buf else [], stack)
    zc_flags = IORING_SEND_ZC_REPORT_USAGE if usage else 0
    sender = ReferenceSender(ring, pool, cfg.fixed_buf, cfg.proto == "tcp", zc_flags, cfg.break_contract)
    result = Result(cfg.mode, cfg.proto, cfg.size, cfg.pool, family_name(cfg.family),
                    setup=ring.setup_flags)
    meter = Meter()
    t = sender.run(count, meter.t0 + int(cfg.seconds * 1e9) if not count else NEVER,
                   lambda: STOP.requested)
    stopped = STOP.requested
    meter.stop(result)                          # the rate covers sending; the drain is not timed
    waited = sender.drain(DRAIN_SECONDS, lambda: STOP.hurry)
    result.interrupted = STOP.requested
    result.requests, result.bytes, result.eagain = t.ok, t.bytes, t.eagain
    result.notifications, result.failed, result.undrained = t.notifs, t.failed, len(sender.owed)
    result.drain_s = waited
    result.zc_copied = t.copied if zc_flags else None
    result.pool = {"buffers": cfg.pool, "break_contract": cfg.break_contract,
                   "rewritten_early": sender.broke, **lag_summary(sender.lags_ns, sender.pinned_max, result)}
    result.error = run_error(cfg, result, t.error, None, waited, gave_up=stopped and STOP.hurry,
                             held_back=sender.held_back)
    return result


def tx_socket(cfg: SendConfig) -> socket.socket:
    """open_tx_socket(), or the control connection a receiver took without a word (cfg.data_sock)."""
    sock, cfg.data_sock = cfg.data_sock, None
    return sock or open_tx_socket(cfg.proto, cfg.family, cfg.addr, cfg.port)


# --- send(2), with and without MSG_ZEROCOPY: the baselines --------------------
#
# The kernel selftest msg_zerocopy.c's send(2) loop, copying or with
# MSG_ZEROCOPY, as a careful program writes it: MSG_DONTWAIT sends, a poll()
# when the socket is full (counted as EAGAIN), completions read off the error
# queue "every couple of send calls" (Documentation/networking/msg_zerocopy.rst).
#
# With SO_ZEROCOPY, every send(MSG_ZEROCOPY) that moves data takes the next
# number of a per-socket u32 counter. When the kernel lets go of the pages it
# queues a sock_extended_err (SO_EE_ORIGIN_ZEROCOPY) whose [ee_info, ee_data]
# is the inclusive range of sends completed, extending a queued one rather
# than adding one. ee_code SO_EE_CODE_ZEROCOPY_COPIED: the kernel copied after
# all (a merged range keeps its first send's flag). Queued notifications are
# charged to the socket's option memory (net.core.optmem_max): when it is used
# up, send fails with ENOBUFS, and the remedy is to read the queue.

SEND_BURST = 16         # send(2) calls between two looks at the clock and at STOP
ZC_REAP_EVERY = 32      # MSG_ZEROCOPY sends between two reads of the error queue
POLL_MS = 100           # longest wait in poll(): STOP is looked at this often
SOCKADDR_IN6_SIZE = 28  # the offender address that follows sock_extended_err in the cmsg
ERRQUEUE_CMSG_SPACE = socket.CMSG_SPACE(ctypes.sizeof(sock_extended_err) + SOCKADDR_IN6_SIZE)
# (level, type) of the control message that carries sock_extended_err: IPv4 or IPv6
RECVERR_CMSGS = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}


class ZerocopyCompletions:
    """MSG_ZEROCOPY's bookkeeping, like do_recv_completion() in msg_zerocopy.c, and as strict."""

    def __init__(self):
        self.sent = 0          # sends that moved data: each took a number
        self.completed = 0     # sends covered by the ranges read so far
        self.copied = 0        # ... of which in ranges flagged SO_EE_CODE_ZEROCOPY_COPIED
        self.ranges = 0        # notifications read (one recvmsg each)
        self.next_lo = 0       # where the next range should start, if in order
        self.out_of_order = 0  # ranges that did not start there (allowed, but rare)

    def add(self, lo: int, hi: int, code: int) -> int:
        """Count the inclusive range [lo, hi] of send numbers; returns its length."""
        n = ((hi - lo) & U32) + 1          # the counter is u32: a range may wrap
        if lo != self.next_lo:
            self.out_of_order += 1
        self.next_lo = (hi + 1) & U32
        self.completed += n
        self.ranges += 1
        if code & SO_EE_CODE_ZEROCOPY_COPIED:
            self.copied += n
        if self.completed > self.sent:
            raise AssertionError(f"MSG_ZEROCOPY: {self.completed} completions for {self.sent} sends")
        return n

    @property
    def outstanding(self) -> int:
        return self.sent - self.completed

    def read(self, sock: socket.socket, sent: int) -> int:
        """recvmsg(MSG_ERRQUEUE) until the queue is empty (it never blocks), sent sends made.

        Returns 0, or the errno of an error that is not a zero-copy completion
        (none is expected: we do not ask for IP_RECVERR).
        """
        self.sent = sent
        while True:
            try:
                _, ancdata, msg_flags, _ = sock.recvmsg(0, ERRQUEUE_CMSG_SPACE, socket.MSG_ERRQUEUE)
            except BlockingIOError:
                return 0
            if msg_flags & socket.MSG_CTRUNC:
                raise AssertionError("recvmsg(MSG_ERRQUEUE): control message truncated")
            for level, kind, data in ancdata:
                if (level, kind) not in RECVERR_CMSGS:
                    continue
                ee = sock_extended_err.from_buffer_copy(data)
                if ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY or ee.ee_errno:
                    return ee.ee_errno or errno.EIO
                self.add(ee.ee_info, ee.ee_data, ee.ee_code)


class SyscallSender:
    """The selftest msg_zerocopy.c's do_tx(): send(2) in a loop, MSG_ZEROCOPY (and SO_ZEROCOPY) if asked.

    poll_each polls after every send as the selftest does (the RFC's baseline,
    two syscalls a packet); without it poll() runs only when the socket is full.
    """

    def __init__(self, cfg: SendConfig, sock: socket.socket, payload: Payload, zerocopy: bool,
                 poll_each: bool = False):
        self.cfg, self.sock, self.payload = cfg, sock, payload
        self.zerocopy, self.poll_each = zerocopy, poll_each
        self.mode = ("msg_zerocopy_poll" if poll_each else "msg_zerocopy") if zerocopy else "send_syscall"
        self.completions = ZerocopyCompletions()     # what run() read off the error queue
        self.started_ns = 0                          # perf_counter_ns when run() started
        if cfg.gso:
            set_udp_segment(sock, cfg.gso)
        if zerocopy:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            except OSError as e:
                raise Fatal(f"setsockopt(SO_ZEROCOPY) refused ({errno.errorcode.get(e.errno, e.errno)}): "
                            f"MSG_ZEROCOPY needs Linux 4.14+ for TCP, 5.0+ for UDP") from None

    def run(self, on_tick: Optional[Callable[[int, int], None]] = None,
            tick_ns: int = 0) -> Result:
        """Send for cfg.seconds; return the totals, every completion reaped.

        A TCP send may move fewer bytes than asked: the next starts where the
        stream stands, so the wire carries the pattern in order.
        """
        cfg, sock = self.cfg, self.sock
        whole = memoryview(self.payload.map)
        views = [whole[p:p + cfg.size] for p in range(PATTERN_LEN if cfg.proto == "tcp" else 1)]
        writable = select.poll()       # wakes when the send buffer has space (or an error is queued)
        writable.register(sock, select.POLLOUT)
        errq = select.poll()           # wakes when a notification is queued
        errq.register(sock, select.POLLERR)
        result = Result(self.mode, cfg.proto, cfg.size, 1, family_name(cfg.family), gso=cfg.gso or None)
        self.payload.lent += 1         # until the drain settles it (see Payload)
        try:
            meter = Meter()
            self.started_ns = meter.t0    # -i: where the interval lines start counting
            counts = self.send_until_done(views, writable, errq, meter.t0, on_tick, tick_ns)
            result.interrupted = STOP.requested
            meter.stop(result)          # the rate covers sending; the drain below is not timed
            waited, drain_error = self.drain_notifications(counts[0], errq)
        finally:
            for v in views:
                v.release()             # the mmap cannot close while a view exports it
            whole.release()
        self.settle_result(result, counts, drain_error, waited)
        return result

    def send_until_done(self, views: List[memoryview], writable, errq, t0: int,
                        on_tick: Optional[Callable[[int, int], None]], tick_ns: int
                        ) -> Tuple[int, int, int, int, int, bool]:
        """do_tx()'s loop: bursts of send(2) to the deadline; (sends, bytes, eagain, enobufs, errno, starved).

        Each burst is one tight loop, every name bound before it: Python's cost per send is the row.
        """
        cfg, sock, zc, poll_each, done = self.cfg, self.sock, self.zerocopy, self.poll_each, self.completions
        flags = socket.MSG_DONTWAIT | (MSG_ZEROCOPY if zc else 0)
        send, poll, clock, burst = sock.send, writable.poll, time.perf_counter_ns, range(SEND_BURST)
        view, nviews = views[0], len(views)
        # The selftest's loop, datagrams: one send(), one poll(), and Python's least around them: this
        # row is the RFC's baseline, and every ns of Python per send lowers it (README: "Speed").
        selftest = poll_each and nviews == 1
        sends = nbytes = eagain = enobufs = error = 0
        starved = False                # ENOBUFS with nothing outstanding: waiting cannot help
        reap_at = ZC_REAP_EVERY
        deadline = t0 + int(cfg.seconds * 1e9)
        next_tick = t0 + tick_ns if tick_ns else deadline + 1
        while True:
            now = clock()
            if now >= deadline or STOP.requested or error:
                break
            if now >= next_tick:                # -i: ticks only inside the run
                on_tick(nbytes, sends)
                next_tick += tick_ns
            try:
                if selftest:                    # send, poll(), send, ... as do_tx() does
                    for _ in burst:
                        nbytes += send(view, flags)
                        sends += 1
                        if not poll(POLL_MS):   # no room: only now read the error queue
                            error = done.read(sock, sends) if zc else 0
                            break
                elif nviews > 1 or poll_each:   # TCP, from where the stream stands
                    for _ in burst:
                        nbytes += send(views[nbytes % nviews], flags)
                        sends += 1
                        if poll_each:
                            poll(POLL_MS)
                else:
                    for _ in burst:
                        nbytes += send(view, flags)
                        sends += 1
            except BlockingIOError:             # the send buffer is full: wait for room
                eagain += 1
                error = done.read(sock, sends) if zc else 0
                poll(POLL_MS)
            except OSError as e:
                if not (zc and e.errno == errno.ENOBUFS):
                    error = e.errno
                    continue
                error, starved = self.after_enobufs(sends, errq)
                if starved:
                    continue
                enobufs += 1                    # ... and retried
            if zc and sends >= reap_at and not selftest:
                error = error or done.read(sock, sends)
                reap_at = sends + ZC_REAP_EVERY
        return sends, nbytes, eagain, enobufs, error, starved

    def after_enobufs(self, sends: int, errq) -> Tuple[int, bool]:
        """ENOBUFS from a MSG_ZEROCOPY send: free option memory, or say (errno, starved) that none will come.

        Out of option memory, which unread notifications hold: read them;
        if there were none, wait for one. If none is outstanding either,
        no completion will ever free some.
        """
        done = self.completions
        ranges = done.ranges
        error = done.read(self.sock, sends)
        if done.ranges == ranges and not done.outstanding:
            return errno.ENOBUFS, True
        if done.ranges == ranges:
            errq.poll(POLL_MS)
        return error, False

    def drain_notifications(self, sends: int, errq) -> Tuple[float, int]:
        """Every completion before the buffer may go, in section 6's drain_owed(); (seconds waited, errno).

        Bounded, as a TCP peer that stopped reading could hold the pages for minutes.
        """
        done, sock, zc = self.completions, self.sock, self.zerocopy
        done.sent = sends
        read_errors = []

        def wait_and_read(left: float) -> None:
            errq.poll(min(POLL_MS, left * 1000))
            read_errors.append(done.read(sock, sends))
        waited = drain_owed(lambda: zc and done.outstanding, wait_and_read, DRAIN_SECONDS,
                            lambda: STOP.hurry)
        # Settled: only what never came stays lent (send(2) without MSG_ZEROCOPY copies:
        # nothing is owed, though `outstanding` counts every send then).
        self.payload.lent += (done.outstanding if zc else 0) - 1
        return waited, next((e for e in read_errors if e), 0)

    def settle_result(self, result: Result, counts: Tuple[int, int, int, int, int, bool],
                      drain_error: int, waited: float) -> None:
        """The totals into result, and its one error line: starved, a send's errno, or what never came."""
        sends, nbytes, eagain, enobufs, error, starved = counts
        error = error or drain_error
        done = self.completions
        result.requests, result.bytes, result.eagain, result.enobufs = sends, nbytes, eagain, enobufs
        result.drain_s = waited
        if self.zerocopy:
            result.notifications, result.zc_copied = done.completed, done.copied
            result.undrained = done.outstanding
        if starved:
            result.error = zerocopy_enobufs_error()
        elif error:
            result.error = send_error(error, self.cfg)
        elif result.undrained and not STOP.hurry:
            result.error = undrained_error(self.cfg, waited)


# =============================================================================
# 9. The receiver
#
# `sendzc.py rx` is the other box. It binds, takes one sender (TCP: one
# connection, until the sender closes it; UDP: datagrams, until -t or
# RX_UDP_IDLE_S of silence; --keep: sender after sender), counts what
# arrives and checks every byte against the pattern the senders send. The
# check is why it exists: a zero-copy send lends the kernel the
# application's pages, so an application that rewrote a buffer before its
# F_NOTIF CQE would put the new bytes on the wire, and no error would say so
# anywhere. Only the far end can see it, by knowing what every byte must be:
#
#   TCP  byte o of the stream is PATTERN[o % 26]. Where one receive ends and
#        the next begins is the network's choice, so a receive of k bytes at
#        stream offset o must equal the pattern from phase o % 26 on. (A
#        sender that sends each request from its buffer's start, as the seed's
#        send-zc.c does, restarts it every send: Verifier.restarted() sees it.)
#   UDP  every datagram is the pattern from its first byte ('a'), also
#        when UDP_GRO brings several in one receive (GroReceiver).
#
# The zero-copy contract holds here the other way round: the kernel writes
# into our buffer from the moment a receive is submitted until its
# completion. So the buffer is read (verified) only after the completion,
# and the next receive is submitted only after that read: one buffer is
# enough. A receiver that kept several receives in flight would need a
# buffer for each.
# =============================================================================

RX_BUF = 1 << 20             # bytes one receive may bring (a TCP receive here brings 40-700 KiB)
RX_UDP_RCVBUF = 1 << 22      # UDP socket buffer: dozens of 64 KiB datagrams queue while we verify one
RX_UDP_IDLE_S = 1.0          # UDP has no EOF: this long without a datagram means the sender is done
RX_TICK_S = 0.2              # a receiver with nothing to read looks at Ctrl-C, -t and -i this often
NEVER = 1 << 63              # a deadline in perf_counter_ns that never comes
GRO_SIZE = struct.Struct("@i")   # UDP_GRO's cmsg: int gso_size (udp_cmsg_recv())
RXQ_OVFL = struct.Struct("@I")   # SO_RXQ_OVFL's cmsg: __u32, the socket's drops so far (sk_drops)
RX_CMSG_SPACE = socket.CMSG_SPACE(GRO_SIZE.size) + socket.CMSG_SPACE(RXQ_OVFL.size)   # room for both
# rx --pool, UDP: how many requests out of order a datagram may come and still be checked
# against every stamp seen; a pool has few sends in flight, so one further behind came before.
POOL_REORDER_WINDOW = 1 << 16


def first_mismatch(data: memoryview, want: bytes, start: int = 0) -> int:
    """Index of the first byte of data that differs from want[start:]: bisection, ~20 memcmp()."""
    good, bad = 0, len(data)            # data[:good] matches, data[:bad] does not
    while bad - good > 1:
        mid = (good + bad) // 2
        if want.startswith(data[:mid], start):
            good = mid
        else:
            bad = mid
    return good


class Verifier:
    """Checks received bytes against the pattern: one memcmp() per receive.

    pattern.startswith(view[:k], phase) compares in place, in memcmp(), ten
    times the stream's rate; a bytes slice would copy first, and memoryview ==
    compares item by item: both slower than the stream.
    """

    def __init__(self, span: int):
        self.span = span
        self.pattern = pattern(span + PATTERN_LEN)   # a receive of span bytes from any phase
        self.matches = self.pattern.startswith       # matches(view[:k], phase) -> bool
        self.period = PATTERN_LEN                    # TCP: byte o is pattern[(o - shift) % period]
        self.shift = 0                               # (restarted(), pieces())
        self.size = 0                                # TCP: the sender's send size, once restarted() saw it
        self.base = self.pattern                     # the pattern that runs on
        self.sends: bytes = b""                      # the pattern restarted every size bytes
        self.pending = [0] * PATTERN_LEN             # sends cut short, by the phase where they stopped
        self.cuts = 0                                # sends that came in pieces (pieces())
        self.anchored = False                        # pieces(): at a known offset of a send, not a rest
        self.bad = 0                                 # receives (TCP) or datagrams (UDP) that failed
        self.first: Optional[dict] = None            # where the first one went wrong
        self.other = ""                              # what the data are instead: "stamps", "pattern", ""
        self.compared = 0                            # UDP: datagrams compared (an empty one has no byte)
        self.segment = 0                             # UDP_GRO: the segment size self.layout is for
        self.layout: Optional[bytes] = b""           # that many-byte datagrams laid end to end

    def datagrams(self, view: memoryview, k: int, segment: int, index: int) -> None:
        """Check one UDP receive of k bytes from datagram number index on: one, or (UDP_GRO) several."""
        step = segment if 0 < segment < k else k
        if not k:
            return                                   # an empty datagram: nothing to compare
        self.compared += -(-k // step)
        if step < k and self.layout is not None:     # all right? one memcmp() tells
            if segment != self.segment or k > len(self.layout):
                self.segment = segment
                self.layout = pattern(segment) * (max(k, IP_MAXPACKET) // segment + 1)
            if self.layout.startswith(view[:k]):
                return
        for at in range(0, k, step):            # count each wrong datagram, place the first
            n = min(step, k - at)
            if not self.matches(view[at:at + n], 0):
                self.mismatch(view[at:], n, 0, 0, index + at // step)

    def mismatch(self, view: memoryview, k: int, phase: int, offset: int,
                 datagram: Optional[int]) -> None:
        """Count a receive that failed; describe the first in full."""
        if datagram is None and not self.size and self.first is None and self.restarted(view, k, phase, offset):
            phase = offset % self.size               # the same receive, on the new terms
        if datagram is None and self.size:
            self.bad += not self.pieces(view, k, phase, offset)
            return
        self.bad += 1
        if self.first is None:
            i = first_mismatch(view[:k], self.pattern, phase)
            self.first = {"offset": offset + i, "datagram": datagram,
                          "got": view[i], "expected": self.pattern[phase + i]}
            udp = datagram is not None
            self.other = "stamps" if (udp or offset + i == 0) and is_stamped(view[:k], udp) else ""

    def restarted(self, view: memoryview, k: int, phase: int, offset: int) -> bool:
        """Does the stream start the pattern again where it first differs? Then it repeats there.

        The seed's send-zc.c and liburing's send-zerocopy send every request from
        the start of one buffer, so their TCP stream is the pattern's first S bytes
        again and again (S: their -s). From here on every byte is checked on those
        terms, pattern[o % S % 26]: a real mismatch later keeps its line. It takes
        a run of the pattern from 'a' there (26 bytes, or S, or to the receive's end) to
        be sure; pieces() then checks the whole receive on the new terms.
        """
        i = first_mismatch(view[:k], self.pattern, phase)
        size = offset + i                            # where the first send ended
        if self.size or not 0 < size <= TCP_MAX_WRITE or view[i] != PATTERN[0]:
            return False
        if not self.pattern.startswith(view[i:i + min(k - i, PATTERN_LEN, size)]):
            return False
        self.size, self.anchored = size, True
        self.sends = pattern(size) * ((self.span + size) // size + 2)   # a receive of span from any phase
        return True

    def pieces(self, view: memoryview, k: int, phase: int, offset: int) -> bool:
        """On restarted() terms, a receive the one memcmp() refused: read it as pieces of sends.

        Several sends in flight on one TCP socket (liburing's send-zerocopy -n 8:
        "submit batching >1 with TCP sockets will cause data reordering") may cut
        a send short and send its rest after other sends. So a piece may begin
        with 'a' (a new send) or at the phase where a cut send stopped; a rest's
        place in its send is known only mod 26, so it is checked as the pattern
        running on until the next piece. False, placing self.first, at a byte
        that neither continues its piece nor begins one.
        """
        size, at, ok = self.size, 0, True
        anchored, cur = self.anchored, phase         # cur: the send's offset, or (a rest) the phase
        while True:
            want = self.sends if anchored else self.base
            rest = view[at:k]
            at += len(rest) if want.startswith(rest, cur) else first_mismatch(rest, want, cur)
            cur = (at - (k - len(rest)) + cur) % (size if anchored else PATTERN_LEN)
            if at == k:
                break
            got, stop = view[at] - PATTERN[0], cur % PATTERN_LEN
            if anchored and cur == 0 and got == size % PATTERN_LEN:
                anchored, cur = False, got           # a cut the pattern hid: its send's rest runs on
                continue
            if not (anchored and cur == 0 or not anchored and stop == size % PATTERN_LEN and got == 0):
                self.pending[stop] += 1              # this piece's send stopped short of its end
            if got == 0:
                anchored, cur = True, 0              # a new send
            elif 0 < got < PATTERN_LEN and self.pending[got]:
                self.pending[got] -= 1               # the rest of a send cut there
                self.cuts += 1
                anchored, cur = False, got
            else:
                if self.first is None:
                    self.first = {"offset": offset + at, "datagram": None, "got": view[at],
                                  "expected": want[cur]}
                ok, at = False, at + 1               # on, from the next byte as if it were right
                cur = (cur + 1) % (size if anchored else PATTERN_LEN)
                if at == k:
                    break
        self.anchored, self.period = anchored, size if anchored else PATTERN_LEN
        self.pattern = self.sends if anchored else self.base
        self.matches = self.pattern.startswith
        self.shift = (offset + k - cur) % self.period
        return ok

    def unverified(self, r: "RxResult") -> Optional[str]:
        """Why no byte was compared, or None: a verdict speaks only of bytes it compared."""
        if r.proto == "tcp":
            return None if r.bytes else "the connection brought no data"
        return None if self.compared else f"all {r.datagrams} datagrams were empty"

    def error_line(self, r: "RxResult") -> str:
        """One line for a failed verification: where, what, and what it means."""
        if self.other == "stamps":
            return ("rx: verification failed: the data are --pool stamps, not the pattern: the sender "
                    "runs with --pool N: start rx with --pool")
        f = r.first_mismatch
        where = (f"stream byte {f['offset']}" if f["datagram"] is None
                 else f"byte {f['offset']} of datagram {f['datagram']} (both counted from 0)")
        count = f"{r.receives} receives" if r.proto == "tcp" else f"{r.datagrams} datagrams"
        restart = f" (restarted every {self.size} bytes)" if self.size else ""
        return (f"rx: verification failed: {where} is {f['got']:#04x} where the pattern{restart} has "
                f"{f['expected']:#04x} {chr(f['expected'])!r} ({r.mismatches} of {count} "
                f"differ): the data changed after the sender handed it over, as when a zero-copy "
                f"buffer is rewritten before its notification")


def is_stamped(data: memoryview, whole: bool) -> bool:
    """Do data begin with a --pool stamp (of a request of their own length, if whole)?"""
    if len(data) < STAMP.size:
        return False
    size = STAMP.unpack_from(data)[1]
    return STAMP.size <= size <= TCP_MAX_WRITE and (size == len(data) or not whole)


class PoolVerifier(Verifier):
    """rx --pool: checks the stamps of a --pool sender (section 6) instead of the pattern.

    UDP: each datagram one request's stamp() whole, no request twice, some
    lost or out of order (neither UDP nor io_uring's sends in flight keep it).
    TCP: stamp(0, size), stamp(1, size), ... in order. A buffer rewritten
    before its notification shows as a later request's stamp, or a torn one.
    Data that carry no stamp at all are named as such (the plain pattern: a
    sender without --pool), never as some request's.
    """

    def __init__(self, proto: str):
        super().__init__(0)
        self.matches = self.stream if proto == "tcp" else self.datagram
        self.checked = 0              # TCP: stream bytes checked; UDP: datagrams
        self.size = 0                 # TCP: the requests' size, from the first stamp
        self.head = b""               # TCP: the first bytes, until a whole stamp has come
        self.seen: Dict[int, int] = {}    # UDP: sequence number -> the datagram that carried it
        self.top = -1                 # UDP: the highest sequence number seen
        self.floor = 0                # UDP: below it, seen is forgotten (POOL_REORDER_WINDOW)
        self.why: Optional[dict] = None   # what the last failed check found
        self.layout = None            # each datagram has its own stamp: check them one by one

    def unstamped(self, data: memoryview, n: Optional[int]) -> bool:
        """data (a datagram, or the stream's start) carry no stamp: say so, and what they are."""
        if self.first is None:
            self.other = "pattern" if data and pattern(len(data)) == data else ""
        self.why = dict(offset=0, datagram=n, got=data[0] if data else None, expected=None,
                        request=None, length=len(data))
        return False

    def datagram(self, data: memoryview, phase: int = 0) -> bool:
        """Is data one request's stamp, of a request not seen before? (phase: unused)"""
        n, self.checked = self.checked, self.checked + 1
        if not is_stamped(data, True):
            return self.unstamped(data, n)
        seq = STAMP.unpack_from(data)[0]
        want = stamp(seq, len(data))
        if not want.startswith(data):             # same length: equal, compared in place
            i = first_mismatch(data, want)
            self.why = dict(offset=i, datagram=n, got=data[i], expected=want[i], request=seq)
            return False
        if seq < self.floor or seq in self.seen:  # this request's stamp came before
            self.why = dict(offset=0, datagram=n, got=data[0], expected=(self.top + 1) & 0xFF,
                            request=seq, previous=self.seen.get(seq))
            return False
        self.seen[seq] = n
        self.top = max(self.top, seq)
        if len(self.seen) > 2 * POOL_REORDER_WINDOW:   # keep memory flat over a long run
            self.floor = self.top - POOL_REORDER_WINDOW
            self.seen = {q: d for q, d in self.seen.items() if q >= self.floor}
        return True

    def stream(self, data: memoryview, phase: int = 0) -> bool:
        """Are data the stream's next bytes, the requests' stamps in order? (phase: unused)"""
        if self.size < 0:
            return False                          # the stream began with no stamp: all of it fails
        if not self.size:
            self.head += bytes(data)
            if len(self.head) < STAMP.size:
                return True                       # checked once a whole stamp is here
            size = STAMP.unpack_from(self.head)[1]
            if not STAMP.size <= size <= TCP_MAX_WRITE:   # not a --pool stream: no request to name
                self.size, head, self.head = -1, memoryview(self.head), b""
                return self.unstamped(head[:STAMP.size], None)
            self.size = size
            data, self.head = memoryview(self.head), b""
        o, k, size = self.checked, len(data), self.size
        self.checked += k
        first = o // size
        want = b"".join(stamp(q, size) for q in range(first, (o + k - 1) // size + 1))
        start = o - first * size
        if want.startswith(data, start):
            return True
        i = first_mismatch(data, want, start)
        self.why = dict(offset=o + i, datagram=None, got=data[i], expected=want[start + i],
                        request=(o + i) // size)
        return False

    def mismatch(self, view: memoryview, k: int, phase: int, offset: int,
                 datagram: Optional[int]) -> None:
        self.bad += 1
        self.first = self.first or self.why

    def unverified(self, r: "RxResult") -> Optional[str]:
        if r.proto == "tcp" and r.bytes and not self.checked and self.size >= 0:
            return (f"the stream ended after {r.bytes} bytes, short of one {STAMP.size}-byte "
                    f"--pool stamp")
        return super().unverified(r)

    def error_line(self, r: "RxResult") -> str:
        f = r.first_mismatch
        count = "receives" if r.proto == "tcp" else "datagrams"
        tally = f"({r.mismatches} of {r.receives} {count} differ)"
        if self.other == "pattern":
            return ("rx: --pool verification failed: the data are the plain pattern, not --pool stamps: "
                    "the sender runs without --pool: start rx without --pool")
        if "length" in f:
            n = f"{f['length']} byte{'s' if f['length'] != 1 else ''}"
            where = (f"the stream's first {STAMP.size} bytes are no request's stamp" if f["datagram"] is None
                     else f"datagram {f['datagram']} ({n}) is shorter than one {STAMP.size}-byte stamp"
                     if f["length"] < STAMP.size else
                     f"datagram {f['datagram']} ({n}) begins with no stamp of a request that long")
            return (f"rx: --pool verification failed: {where} {tally}: neither a --pool sender's "
                    f"stamps nor the plain pattern: check what sends to this port")
        if "previous" in f:
            before = (f"datagram {f['previous']} carried already" if f["previous"] is not None else
                      f"is more than {POOL_REORDER_WINDOW} requests behind the newest")
            where = (f"byte 0 of datagram {f['datagram']} carries request {f['request']}'s stamp, "
                     f"which {before} (each request is sent once)")
        else:
            at = (f"stream byte {f['offset']}" if f["datagram"] is None
                  else f"byte {f['offset']} of datagram {f['datagram']}")
            where = f"{at} is {f['got']:#04x} where request {f['request']}'s stamp has {f['expected']:#04x}"
        return (f"rx: --pool verification failed: {where} {tally}: a buffer was rewritten while "
                f"the kernel still held it, before its notification (F_NOTIF)")


@dataclass
class RxResult(Rates):
    """One run of the receiver: what arrived, whether it was the pattern, what it cost."""
    proto: str
    method: str                      # how it received: "io_uring RECV", "recv_into", "recvmsg UDP_GRO"
    family: Optional[str] = None     # the sender's; None until a sender comes
    peer: str = ""                   # the sender's address and port
    bytes: int = 0
    receives: int = 0                # receives that brought data (UDP_GRO: several datagrams each)
    datagrams: Optional[int] = None  # UDP: datagrams received
    dropped: Optional[int] = None    # UDP: packets the full socket buffer dropped (SO_RXQ_OVFL, SO_MEMINFO)
    gro_segment: Optional[int] = None    # UDP: the largest UDP_GRO segment size seen; None: none coalesced
    segments: Optional[int] = None   # TCP: segments that arrived (TCP_INFO tcpi_segs_in)
    seconds: float = 0.0             # measured: connection (TCP) or first datagram (UDP) to last byte
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    verified: Optional[bool] = None  # every byte was the pattern; None: --no-verify, or nothing compared
    mismatches: int = 0              # receives (TCP) or datagrams (UDP) with a wrong byte
    first_mismatch: Optional[dict] = None
    interrupted: bool = False
    error: Optional[str] = None
    note: Optional[str] = None       # why the method is not the default one
    stamped: bool = False            # rx --pool: checked against a --pool sender's stamps (not in JSON)
    unverified: Optional[str] = None     # why no byte was compared (not in JSON: verified null, error)
    compared: int = 0                # UDP: datagrams compared, the empty ones not (not in JSON)
    period: int = 0                  # TCP: the sender restarts its pattern every period bytes (not in JSON)
    cuts: int = 0                    # ... and this many of its sends came in pieces (not in JSON)
    intervals: Optional[List[dict]] = None   # -i: Intervals.rows of this run
    discard: bool = False            # --discard: MSG_TRUNC, nothing copied to us, nothing verified
    started_ns: int = 0              # perf_counter_ns when it began: -n's total spans the flows

    ROW = ("proto family peer method bytes receives datagrams dropped gro_segment segments seconds "
           "mb_per_s gbit_per_s cpu_user_s cpu_sys_s verified mismatches first_mismatch interrupted "
           "error note discard").split()      # the JSON row's fields, in order (README documents each)
    DIGITS = {"seconds": 6, "mb_per_s": 1, "gbit_per_s": 3, "cpu_user_s": 3, "cpu_sys_s": 3}

    def row(self) -> dict:
        row = {"mode": "rx", **{name: getattr(self, name) for name in self.ROW}}
        row.update((name, round(row[name], digits)) for name, digits in self.DIGITS.items())
        return row if self.intervals is None else {**row, "intervals": self.intervals}


@dataclass
class RxConfig:
    """What `sendzc.py rx` was asked to do; the JSON params, in this order."""
    proto: str = "tcp"
    family: Optional[int] = None     # None: IPv6 and IPv4 on one socket
    port: int = DEFAULT_PORT
    seconds: Optional[float] = None  # -t; None: until the sender is done
    verify: bool = True
    uring: bool = True               # TCP through IORING_OP_RECV (else recv_into)
    flows: int = 1                   # -n: a sender's TCP connections, each received in a thread
    keep: bool = False               # --keep: sender after sender
    discard: bool = False            # --discard: receive with MSG_TRUNC, verify nothing
    pool: bool = False               # --pool: check a --pool sender's stamps (PoolVerifier)

    def params(self) -> dict:
        return {**vars(self), "family": "any" if self.family is None else family_name(self.family)}


# --- Sockets -----------------------------------------------------------------

def listen_for(cfg: RxConfig) -> socket.socket:
    """bind() on every address (and listen(), for TCP), then say so: msg_zerocopy.c's do_setup_rx().

    With neither -4 nor -6, one IPv6 socket with IPV6_V6ONLY off takes both
    families (IPv4 senders show as ::ffff:a.b.c.d), or IPv4 alone without IPv6.
    SO_RCVTIMEO, which accepted sockets inherit, wakes every wait each RX_TICK_S
    for Ctrl-C, -t and -i; settimeout() would add a poll() to every receive.
    """
    sock_type = SOCK_TYPES[cfg.proto][0]
    family = socket.AF_INET6 if cfg.family is None else cfg.family
    try:
        sock = socket.socket(family, sock_type)
    except OSError as e:
        if cfg.family is not None or e.errno != errno.EAFNOSUPPORT:
            raise Fatal(bind_error(e, cfg)) from None
        family = socket.AF_INET
        sock = socket.socket(family, sock_type)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(cfg.family is not None))
        if cfg.proto == "tcp":
            # A receiver started again right after a run must not wait out TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            try:                # root may pass rmem_max (208 KiB by default), which caps SO_RCVBUF
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RX_UDP_RCVBUF)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RX_UDP_RCVBUF)
            try:                # now, so the first sender's first datagrams coalesce too
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            except OSError:
                pass            # (before 5.0: open_receiver() says so)
        timeval = struct.pack("@ll", int(RX_TICK_S), int(RX_TICK_S % 1 * 1e6))   # {tv_sec; tv_usec}
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", cfg.port))
        if cfg.proto == "tcp":
            # Room for every flow a sender connects at once (-n), its control
            # connection first: listen(1) overflowed at rx -n 64 and took 37.
            sock.listen(socket.SOMAXCONN)
    except OSError as e:
        sock.close()
        raise Fatal(bind_error(e, cfg)) from None
    return sock


def say_waiting(cfg: RxConfig, family: int) -> None:
    """rx's first line, once it listens (and has its control listener): what it waits for."""
    # On stderr: stdout may be JSON.
    where = "IPv6 and IPv4" if family == socket.AF_INET6 and cfg.family is None \
        else family_name_label(family_name(family))
    n = cfg.flows
    whom = (("senders, one after another" if n == 1 else f"senders, {n} at a time") if cfg.keep
            else "a sender" if n == 1 else f"{n} senders")
    print(f"sendzc rx: {cfg.proto} port {cfg.port} ({where}): waiting for {whom}; "
          f"Ctrl-C to stop", file=sys.stderr, flush=True)


def peer_name(addr: tuple) -> Tuple[str, str]:
    """(family name, "host:port") of a peer; IPv4-mapped IPv6 addresses read as IPv4."""
    host = addr[0][len("::ffff:"):] if addr[0].startswith("::ffff:") and "." in addr[0] else addr[0]
    return ("ipv6" if ":" in host else "ipv4"), host_port(host, addr[1])


def until_stop(call: Callable[[], tuple]) -> Optional[tuple]:
    """call() until it returns, tried again every RX_TICK_S (SO_RCVTIMEO); None on Ctrl-C."""
    while not STOP.requested:
        try:
            return call()
        except BlockingIOError:
            continue
    return None


def socket_drops(sock: socket.socket) -> Optional[int]:
    """Packets this socket dropped, its buffer full (SO_MEMINFO, 4.6+), None if unknown."""
    size = (SK_MEMINFO_DROPS + 1) * 4
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, size)
    except OSError:
        return None
    return struct.unpack_from("I", raw, SK_MEMINFO_DROPS * 4)[0] if len(raw) >= size else None


# --- Receiving ---------------------------------------------------------------
#
# Three ways to receive, one interface: recv() returns how many bytes the
# next receive put at the start of the buffer, 0 at the end of a TCP stream,
# None when RX_TICK_S passed with nothing to read. TCP receives through
# io_uring, measured faster than recv_into(2) over veth (README, "Receive and
# verify"); recv_into stays for UDP, --no-uring, and hosts without io_uring.

class RxBuffer:
    """The receive buffer: page-aligned, written by the kernel, then read by us."""

    def __init__(self, size: int):
        self.size = size
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_POPULATE)
        self.addr = _addr_of(self.map)
        self.view = memoryview(self.map)
        self.lent = False           # a RECV that would not end may still write here

    def close(self) -> None:
        self.view.release()         # the view must go before the mapping can
        if not self.lent:           # else left mapped until exit, as Payload does
            self.map.close()
        else:
            STILL_LENT.append(self.map)


class SocketReceiver:
    """socket.recv_into(): one recv(2) per receive; the kernel copies inside the call.

    MSG_TRUNC (--discard): TCP's recv drops the bytes uncopied and says how
    many (tcp_recvmsg()); UDP's returns a datagram's full length, copying
    nbytes of it (1: recv_into's 0 means all).
    """

    method = "recv_into"
    segment = 0                     # one datagram per receive (no UDP_GRO)

    def __init__(self, sock: socket.socket, buf: RxBuffer, msg_flags: int = 0, nbytes: int = 0):
        self._recv_into, self._flags = sock.recv_into, msg_flags
        self._view, self._n = buf.view, nbytes or buf.size

    def recv(self) -> Optional[int]:
        try:
            return self._recv_into(self._view, self._n, self._flags)
        except BlockingIOError:
            return None             # SO_RCVTIMEO passed


class GroReceiver:
    """UDP with UDP_GRO: recvmsg(2) with a control buffer, several datagrams per receive.

    Datagrams that GRO coalesced (or one GSO packet over veth) come as one
    receive, end to end, with a cmsg giving the segment size: every datagram's
    but the last's (udp_cmsg_recv()). SO_RXQ_OVFL adds the socket's drop count
    (sock_recv_drops()): packets the full buffer refused, a coalesced one once.
    """

    method = "recvmsg UDP_GRO"

    def __init__(self, sock: socket.socket, buf: RxBuffer, msg_flags: int = 0):
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)        # (again: the refusal is ours to report)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        self._recvmsg_into, self._flags = sock.recvmsg_into, msg_flags
        # MSG_TRUNC (--discard): a datagram's full length back, one byte of it
        # copied, into a scratch byte (a slice of buf.view would pin buf's mapping).
        self._bufs = [buf.view if not msg_flags & socket.MSG_TRUNC else bytearray(1)]
        self.segment = 0            # the last receive's segment size; 0: one datagram
        self.drops = 0              # the socket's drops at the last receive that reported them

    def recv(self) -> Optional[int]:
        try:
            k, cmsgs, _, _ = self._recvmsg_into(self._bufs, RX_CMSG_SPACE, self._flags)
        except BlockingIOError:
            return None             # SO_RCVTIMEO passed
        self.segment = 0
        for level, kind, data in cmsgs:
            if level == SOL_UDP and kind == UDP_GRO:
                self.segment = GRO_SIZE.unpack(data)[0]
            elif level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                self.drops = RXQ_OVFL.unpack(data)[0]
        return k


# liburing's RECV prep (section 5's kind), for the receiver below.
def prep_recv(sqe: io_uring_sqe, fd: int, addr: int, length: int, msg_flags: int) -> None:
    """io_uring_prep_recv(): recv(2) as a request; res is the bytes copied to addr, 0 at EOF.

    No _fixed twin: the kernel refuses IORING_RECVSEND_FIXED_BUF on RECV
    (-EINVAL on 6.18), and a receive, being a copy into our pages, has no
    per-request pinning for a registered buffer to save.
    """
    prep_rw(sqe, IORING_OP_RECV, fd, addr, length, 0)
    sqe.msg_flags = msg_flags


class UringReceiver:
    """TCP through io_uring: one IORING_OP_RECV at a time into the buffer.

    Registered file 0 and ring fd, as UringSender's; one SQE, prepared once,
    placed again for every receive. With data waiting, the kernel receives
    inside the io_uring_enter() that submits; else we wait, RX_TICK_S at a time.
    """

    method = "io_uring RECV"

    def __init__(self, sock: socket.socket, buf: RxBuffer, stack: ExitStack, msg_flags: int = 0):
        self.sock, self.buf, self.inflight = sock, buf, False   # all that cancel() reads
        # One RECV in flight at a time (see the contract above).
        self.ring = ring = Ring(1, attempts=SETUP_ATTEMPTS)
        stack.callback(ring.close)
        # Runs before ring.close (LIFO): a RECV in flight writes into buf, so it must end before buf goes.
        stack.callback(self.cancel)
        if not get_probe(ring).has(IORING_OP_RECV):
            raise OSError(errno.EOPNOTSUPP, "this kernel has no IORING_OP_RECV (needs Linux 5.6+)")
        ring.register_files([sock.fileno()])
        ring.register_ring_fd()
        sqe = io_uring_sqe()
        prep_recv(sqe, 0, buf.addr, buf.size, msg_flags)    # MSG_TRUNC: see SocketReceiver
        sqe.flags |= IOSQE_FIXED_FILE
        self.sqe = bytes(sqe)

    def recv(self) -> Optional[int]:
        ring = self.ring
        if not self.inflight:
            ring.place(self.sqe)
            self.inflight = True
            ring.submit_and_peek(0)         # the CQE is there now if the RECV completed inline
        try:
            if not ring.cq_ready() and not ring.wait_cqes(1, RX_TICK_S):
                return None
        except InterruptedError:
            return None                     # a signal (Ctrl-C): the caller looks at STOP
        res = ring.peek()[0]
        ring.cq_advance(len(res))
        self.inflight = False
        if res[0] < 0:                      # -errno, as recv(2) would have set errno
            raise OSError(-res[0], os.strerror(-res[0]))   # as recv_into() raises it
        return res[0]

    def cancel(self) -> None:
        """End a RECV still in flight: shutdown(SHUT_RD) completes it (as final as
        io_uring_prep_cancel(), with no further opcode); reap its CQE."""
        if not self.inflight:
            return
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass                # ENOTCONN: the peer reset it, and the RECV has ended already
        def wait_and_reap(left: float) -> None:
            if self.ring.wait_cqes(1, left):
                self.ring.cq_advance(len(self.ring.peek()[0]))
                self.inflight = False
        drain_owed(lambda: self.inflight, wait_and_reap, DRAIN_SECONDS, lambda: STOP.hurry)
        if self.inflight:       # the kernel may still write into buf: never unmap it under a RECV
            self.buf.lent = True


def open_receiver(cfg: RxConfig, sock: socket.socket, buf: RxBuffer, stack: ExitStack,
                  result: RxResult):
    """GroReceiver (UDP, 5.0+) or UringReceiver (TCP) if this host allows, else SocketReceiver and a note."""
    flags = socket.MSG_TRUNC if cfg.discard else 0
    udp = cfg.proto == "udp"
    try:
        if udp:
            return GroReceiver(sock, buf, flags)
        if cfg.uring:
            check_io_uring()    # a seccomp profile may refuse io_uring_enter or _register alone
            return UringReceiver(sock, buf, stack, flags)
    except (OSError, Fatal) as e:           # Fatal: a kernel Ring does not support (before 5.11)
        result.note = (f"UDP_GRO refused ({errno.errorcode.get(e.errno, e.errno)}): one datagram "
                       f"per receive, with recv_into" if udp else
                       f"io_uring refused ({getattr(e, 'strerror', None) or e}): "
                       f"received with recv_into instead")
    return SocketReceiver(sock, buf, flags, 1 if udp and cfg.discard else 0)


def receive(rx, buf: RxBuffer, verifier: Optional[Verifier], cfg: RxConfig, result: RxResult,
            ticks: Optional[Intervals], meter: Meter, ended: Optional[Callable[[], bool]] = None) -> None:
    """The loop, from meter.t0: receive, verify, count, until the end, -t, silence or Ctrl-C.

    An -i interval ends only at a receive that brought data, so intervals stop
    at the last byte; a pause shows as one longer interval at its lower rate.
    ended (UDP: ControlPeer.ended) is asked at each pause: has the sender said it is done?
    """
    stream = cfg.proto == "tcp"
    recv, view, clock = rx.recv, buf.view, time.perf_counter_ns
    matches = verifier.matches if verifier else None
    period, shift = (verifier.period, verifier.shift) if verifier else (PATTERN_LEN, 0)
    t0 = result.started_ns = meter.t0
    deadline = t0 + int(cfg.seconds * 1e9) if cfg.seconds else NEVER
    idle_ns = NEVER if stream else int(RX_UDP_IDLE_S * 1e9)
    tick_ns = ticks.every_ns if ticks else 0
    next_tick = t0 + tick_ns if ticks else NEVER
    nbytes = receives = datagrams = biggest = 0
    last = t0                           # when the last data came
    while True:
        try:
            k = recv()
        except OSError as e:
            result.error = recv_error(e, nbytes)
            break
        now = clock()
        if k is None:                   # nothing for RX_TICK_S
            if now - last >= idle_ns or (ended is not None and ended()):
                break                   # UDP: the sender has gone quiet, or said it is done
        elif stream:
            if not k:
                break                   # TCP: 0 bytes is the end of the stream
            phase = (nbytes - shift) % period
            if matches is not None and not matches(view[:k], phase):
                verifier.mismatch(view, k, phase, nbytes, None)
                matches, period, shift = verifier.matches, verifier.period, verifier.shift   # (pieces())
        else:                           # a datagram, or (UDP_GRO) several; an empty one still counts
            segment = rx.segment
            if verifier is not None:
                verifier.datagrams(view, k, segment, datagrams)
            if segment and segment < k:
                datagrams += -(-k // segment)
                biggest = max(biggest, segment)
            else:
                datagrams += 1
        if k is not None:
            nbytes += k
            receives += 1
            last = now
            if now >= next_tick:        # -i
                ticks.report(now, nbytes, receives if stream else datagrams)
                next_tick += tick_ns * ((now - next_tick) // tick_ns + 1)   # the first one after now
        if now >= deadline or STOP.requested:
            break
    meter.stop(result)                  # CPU over the whole run, idle tail included
    settle_receive(result, ticks, stream, nbytes, receives, datagrams, biggest, t0, last)


def settle_receive(result: RxResult, ticks: Optional[Intervals], stream: bool, nbytes: int,
                   receives: int, datagrams: int, biggest: int, t0: int, last: int) -> None:
    """receive()'s totals into result, and the last, partial -i interval (ending at the last byte)."""
    if ticks and (nbytes > ticks.last[1] or not ticks.rows):      # the last, partial interval
        ticks.report(last, nbytes, receives if stream else datagrams)
    result.bytes, result.receives, result.intervals = nbytes, receives, ticks and ticks.rows
    if not stream:
        result.datagrams, result.gro_segment = datagrams, biggest or None
    # The rate runs to the last byte, not to UDP's idle timeout or a -t deadline that passed in silence.
    result.seconds = (last - t0) / 1e9
    result.interrupted = STOP.requested


# --- Serving senders ---------------------------------------------------------

def new_result(cfg: RxConfig) -> RxResult:
    """An empty result, named for the method we mean to use until a sender comes."""
    method = (GroReceiver if cfg.proto == "udp" else UringReceiver if cfg.uring else SocketReceiver).method
    return RxResult(cfg.proto, method, discard=cfg.discard, stamped=bool(cfg.pool))


def serve_one(cfg: RxConfig, sock: socket.socket, printing: bool, interval: Optional[float],
              first: Optional[tuple] = None, ended: Optional[Callable[[], bool]] = None) -> RxResult:
    """msg_zerocopy -r's do_rx(), with a check of every byte: wait on sock for one sender, receive it.

    first: the sender next_*_sender() found (TCP: (conn, addr); UDP: addr); ended: see receive().
    """
    result = new_result(cfg)
    if cfg.proto == "tcp":
        conn, addr = first or until_stop(sock.accept) or (None, None)
    else:                               # the first datagram's sender; the datagram stays queued
        conn, addr = sock, first or until_stop(lambda: sock.recvfrom(1, socket.MSG_PEEK)[1])
    if addr is None:                    # Ctrl-C came first
        result.interrupted = True
        return result
    with ExitStack() as stack:
        if conn is sock:
            # Only this sender from now on (a connected UDP socket gets only its
            # peer's datagrams); then anyone again, for the next sender (--keep).
            conn.connect(addr)
            stack.callback(disconnect, conn.fileno())
        else:
            stack.enter_context(conn)
        receive_from(cfg, conn, addr, result, printing, interval, ended=ended)
    return result


def receive_from(cfg: RxConfig, conn: socket.socket, addr: tuple, result: RxResult, printing: bool,
                 interval: Optional[float], who: int = resource.RUSAGE_SELF,
                 ended: Optional[Callable[[], bool]] = None) -> None:
    """Receive from one sender into result, with a buffer, ring and check of its own: counted, timed."""
    udp = cfg.proto == "udp"
    verifier = None
    if cfg.verify and not cfg.discard:
        verifier = PoolVerifier(cfg.proto) if cfg.pool else Verifier(RX_BUF)
    with ExitStack() as stack:
        buf = RxBuffer(RX_BUF)
        stack.callback(buf.close)           # after the ring (open_receiver) has let go of it
        rx = open_receiver(cfg, conn, buf, stack, result)
        # From here: the drop counter lives as long as the socket, which --keep reuses.
        drops_before = socket_drops(conn) if udp else None
        result.method, (result.family, result.peer) = rx.method, peer_name(addr)
        meter = Meter(who)                  # from the connection, or the first datagram
        ticks = Intervals(interval, printing, meter.t0) if interval else None
        receive(rx, buf, verifier, cfg, result, ticks, meter, ended)
        if udp:
            # SO_RXQ_OVFL told it at the last receive; SO_MEMINFO adds any drops since.
            drops_now = socket_drops(conn)
            if drops_now is not None and drops_before is not None:
                result.dropped = max(drops_now, getattr(rx, "drops", 0)) - drops_before
        else:                               # tcpi_segs_in (4.2+): not in an older kernel's shorter struct
            size = ctypes.sizeof(tcp_info)
            raw = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, size)
            result.segments = tcp_info.from_buffer_copy(raw).tcpi_segs_in if len(raw) >= size else None
    if verifier:
        result.unverified = None if verifier.bad else verifier.unverified(result)
        result.verified = None if result.unverified else verifier.bad == 0
        result.mismatches, result.first_mismatch = verifier.bad, verifier.first
        result.compared, result.period, result.cuts = verifier.compared, verifier.size, verifier.cuts
        if verifier.bad and not result.error:
            result.error = verifier.error_line(result)
        elif result.unverified and not result.error and not result.interrupted:
            result.error = nothing_to_verify(result)


def serve_flows(cfg: RxConfig, sock: socket.socket, first: Optional[tuple] = None) -> Tuple[List[RxResult], RxResult]:
    """rx -n: up to cfg.flows connections, each received in its own thread (own buffer, ring, check).

    A thread starts at its accept, so a first flow never stalls while a last
    one connects (ctypes and sockets release the GIL as they wait). Returns the
    flows' results (RUSAGE_THREAD) and their total (RUSAGE_SELF, first accept
    on), whose rate spans the first flow's start to the last one's end.
    """
    from concurrent.futures import ThreadPoolExecutor, wait
    results: List[RxResult] = []
    flows = []
    meter: Optional[Meter] = None
    with ExitStack() as stack:
        threads = stack.enter_context(ThreadPoolExecutor(cfg.flows, "rx"))
        while len(results) < cfg.flows:
            got, first = first or until_stop(sock.accept), None     # first: accepted already
            if got is None:                 # Ctrl-C before every sender came: end those that did
                break
            stack.callback(got[0].close)    # after every flow has ended (below)
            meter = meter or Meter()
            results.append(new_result(cfg))
            flows.append(threads.submit(receive_from, cfg, *got, results[-1], False, None,
                                        resource.RUSAGE_THREAD))
        while wait(flows, RX_TICK_S).not_done:
            pass                            # short waits: the main thread still sees Ctrl-C
    for flow in flows:
        flow.result()                       # a flow's exception, raised here: reported in one line
    total = add_up(cfg, results)
    if results:
        meter.stop(total)
        # One flow's refusal (io_uring off) is every flow's: name what was used, and why.
        total.note = next((r.note for r in results if r.note), None)
        start = min(r.started_ns for r in results)
        total.seconds = (max(r.started_ns + int(r.seconds * 1e9) for r in results) - start) / 1e9
    return results, total


def add_up(cfg: RxConfig, results: List[RxResult]) -> RxResult:
    """The total of results: counts, times and CPU summed, methods named, the first error and mismatch."""
    total = new_result(cfg)
    total.interrupted = STOP.requested
    if not results:
        return total
    total.family, total.peer = results[0].family, ", ".join(r.peer for r in results)
    total.method = " and ".join(sorted({r.method for r in results}))
    for name in ("bytes", "receives", "mismatches", "segments", "datagrams", "dropped",
                 "seconds", "cpu_user_s", "cpu_sys_s", "compared"):
        counts = [getattr(r, name) for r in results if getattr(r, name) is not None]
        if counts:              # else segments (UDP), datagrams and dropped (TCP) stay None
            setattr(total, name, sum(counts))
    total.gro_segment = max((r.gro_segment for r in results if r.gro_segment), default=None)
    total.error = next((r.error for r in results if r.error), None)
    total.first_mismatch = next((r.first_mismatch for r in results if r.first_mismatch), None)
    verdicts = [r.verified for r in results]
    total.verified = False if False in verdicts else None if None in verdicts else True
    unverified = sum(1 for r in results if r.unverified)
    total.unverified = f"{unverified} of {len(results)} had nothing to verify" if unverified else None
    total.period = next((r.period for r in results if r.period), 0)
    total.cuts = sum(r.cuts for r in results)
    return total


def describe_rx(r: RxResult) -> List[str]:
    """What arrived, at what rate and cost, and whether every byte was right."""
    if not r.peer:
        return ["rx: no sender came"]
    tcp = r.proto == "tcp"
    mb = f"({r.bytes >> 20} MB, {r.bytes} bytes)"
    if tcp:
        segs = "" if r.segments is None else f" in {r.segments} TCP segments"
        lines = [f"rx={r.receives} receives {mb}{segs} from {r.peer}"]
    else:
        gro = "" if r.gro_segment is None else \
            f" in {r.receives} receives (UDP_GRO coalesced them, {r.gro_segment} B segments)"
        drops = "" if r.dropped is None else f"; {r.dropped} dropped by the full socket buffer"
        lines = [f"rx={r.datagrams} datagrams {mb}{gro} from {r.peer}{drops}"]
    lines.append(f"{r.proto} {family_name_label(r.family or '')} {r.method}: {r.mb_per_s:.0f} MB/s "
                 f"{r.gbit_per_s:.2f} Gbit/s in {r.seconds:.2f} s; "
                 f"cpu user {r.cpu_user_s:.2f} s sys {r.cpu_sys_s:.2f} s")
    if r.note:
        lines.append(f"note: {r.note}")
    if r.discard:
        lines.append("verification: off (--discard: MSG_TRUNC receives, the kernel dropped the data "
                     "without copying it to us)")
    elif r.verified is None:
        lines.append(f"not verified: {r.unverified}" if r.unverified else "verification: off (--no-verify)")
    elif r.verified and r.stamped:
        lines.append("verified: every byte is its request's stamp, requests in order" if tcp else
                     f"verified: all {r.compared} datagrams are one request's stamp each, no request "
                     f"twice{empty_ones(r)}")
    elif r.verified and tcp and r.period:
        cut = (f"; {r.cuts} sends came in pieces, the rest of each after other sends (several sends in "
               f"flight on one TCP socket)" if r.cuts else "")
        lines.append(f"verified: every byte is the sender's pattern, restarted every {r.period} bytes "
                     f"(each send from the start of its buffer, as the seed's send-zc.c and liburing's "
                     f"send-zerocopy send){cut}")
    elif r.verified:
        lines.append("verified: every byte is the sender's pattern, in stream order" if tcp
                     else f"verified: all {r.compared} datagrams are the sender's pattern, intact{empty_ones(r)}")
    else:
        count = f"{r.receives} receives" if tcp else f"{r.datagrams} datagrams"
        want = "their requests' stamps" if r.stamped else "the pattern"
        lines.append(f"verification FAILED: {r.mismatches} of {count} differ from {want}")
    return lines


def empty_ones(r: RxResult) -> str:
    """UDP: the empty datagrams a verdict did not compare, if any came."""
    n = (r.datagrams or 0) - r.compared
    return f" ({n} empty datagram{'s' if n != 1 else ''}, nothing to compare)" if n > 0 else ""


def rx_parser() -> "Parser":
    """The receiver's options: the sender's common ones (add_common) and its own."""
    p = Parser(prog="sendzc.py rx", protocols=("udp", "tcp"),
               description="Receive what `sendzc.py -D ADDR` sends, and check every byte "
                           "against its pattern.")
    add_common(p)
    p.add_argument("-t", dest="seconds", type=positive_float, metavar="SECS",
                   help=f"stop SECS seconds after the connection or the first datagram "
                        f"(default: TCP, when the sender closes; UDP, after {RX_UDP_IDLE_S:g} s "
                        f"without a datagram)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="count only; do not check the bytes against the pattern")
    p.add_argument("--no-uring", dest="uring", action="store_false",
                   help="TCP: receive with recv_into(2) instead of IORING_OP_RECV")
    p.add_argument("-n", dest="flows", type=positive_int, default=1, metavar="FLOWS",
                   help="TCP: take FLOWS connections (the sender's -n) and receive each in its "
                        "own thread")
    p.add_argument("-k", "--keep", action="store_true",
                   help="keep serving: sender after sender (as iperf3's server, or nc -lk), each "
                        "reported as it ends (--json: one document a line); Ctrl-C prints the "
                        "totals. Default: serve one sender, then exit with its verdict")
    p.add_argument("--discard", action="store_true",
                   help="receive with MSG_TRUNC: the kernel drops the data without copying it to "
                        "us, and nothing is verified (to measure a sender alone)")
    p.add_argument("--pool", action="store_true",
                   help="check a `--pool` sender's stamps: each datagram (TCP: each request) "
                        "one request's, in order")
    p.add_argument("proto", type=protocol(*p.protocols), metavar="{udp,tcp}", help="what to receive")
    return p


def rx_main(argv: List[str]) -> int:
    """`sendzc.py rx [options] udp|tcp`."""
    a = rx_parser().parse_args(argv)
    cfg = RxConfig(a.proto, one_family(a.families), a.port, a.seconds, a.verify, a.uring, a.flows, a.keep,
                   a.discard, a.pool)
    check_flows(cfg.flows, rx=True)
    if cfg.flows > 1 and cfg.proto != "tcp":
        raise UsageError(f"-n {cfg.flows} with udp: every UDP flow arrives on the one socket; "
                         f"-n is for tcp, one connection a flow")
    if cfg.flows > 1 and a.interval:
        raise UsageError(f"-i with -n {cfg.flows}: interval lines are per run; drop one of the two")
    for flag, given in (("--discard", cfg.discard), ("--no-verify", not cfg.verify)):
        if cfg.pool and given:
            raise UsageError(f"--pool with {flag}: --pool checks the stamps, and {flag} checks "
                             f"nothing: drop one of the two")
    with ExitStack() as stack:
        sock = stack.enter_context(listen_for(cfg))
        ctl = control_listener(cfg, sock) if cfg.proto == "udp" else None
        if ctl is not None:
            stack.enter_context(ctl)
        say_waiting(cfg, sock.family)
        if cfg.keep:
            return serve_senders(cfg, sock, a, ctl)
        results, result = serve(cfg, sock, a, ctl)
    report_rx(cfg, a, results, result)
    if result.error:
        print(f"sendzc: {result.error}", file=sys.stderr)
        return 1
    return 130 if result.interrupted else 0


def serve(cfg: RxConfig, sock: socket.socket, a: argparse.Namespace,
          ctl: Optional[socket.socket] = None) -> Tuple[List[RxResult], RxResult]:
    """One sender (with -n: its flows): each flow's result, and the total (the one result, for one).

    A sender on the control connection says what comes (its -n, the pattern
    or --pool stamps) and gets the result back; one that does not speak it
    is received as rx's options say. ctl: rx udp's TCP control listener.
    """
    arrival = next_tcp_sender(cfg, sock) if cfg.proto == "tcp" else next_udp_sender(cfg, sock, ctl)
    if arrival is None:                 # Ctrl-C came first
        result = new_result(cfg)
        result.interrupted = True
        return [result], result
    mine, control = arrival.cfg, arrival.control
    if mine.flows > 1:
        results, result = serve_flows(mine, sock, arrival.first)
    else:
        udp = mine.proto == "udp"       # (ctl is rx udp's; arrival.first its first datagram's source)
        with turning_away(ctl if udp else None, peer_name(arrival.first)[1] if udp else ""):
            result = serve_one(mine, sock, not a.json, a.interval, arrival.first,
                               control.ended if control and udp else None)
        results = [result]
    if control is not None:
        control.report(mine, results, result)
    return results, result


def report_rx(cfg: RxConfig, a: argparse.Namespace, results: List[RxResult], result: RxResult,
              extra: Optional[dict] = None) -> None:
    """Print one sender's result: a JSON document (on one line with --keep), or the text lines."""
    flows = cfg.flows > 1 or len(results) > 1     # (a sender's hello may ask for more flows than -n)
    if a.json:
        doc = json_doc(cfg.params(), results, extra)
        if flows:
            doc["total"] = result.row()
        print(json.dumps(doc) if cfg.keep else json.dumps(doc, indent=2), flush=True)
    elif flows:     # a line per flow that came (each was accepted, so has a peer), then the total
        lines = [f"flow {i}: " + describe_rx(r)[1] for i, r in enumerate(results)]
        print("\n".join(lines + [f"total of {len(results)} flows:"] + describe_rx(result)), flush=True)
    else:
        print("\n".join(describe_rx(result)), flush=True)


def serve_senders(cfg: RxConfig, sock: socket.socket, a: argparse.Namespace,
                  ctl: Optional[socket.socket] = None) -> int:
    """--keep: serve sender after sender until Ctrl-C, then print the totals (exit 130).

    Each sender gets its own result, buffer, ring, Verifier (its stream is
    checked from phase 0) and drop count; its failure is printed as it ends.
    """
    served: List[RxResult] = []
    while not STOP.requested:
        results, result = serve(cfg, sock, a, ctl)
        if not result.peer:
            break                           # Ctrl-C while waiting for the next sender
        served.append(result)
        if not a.json:
            print(f"sender {len(served)}:", flush=True)
        report_rx(cfg, a, results, result, {"sender": len(served)})
        if result.error:
            print(f"sendzc: {result.error}", file=sys.stderr, flush=True)
    total = add_up(cfg, served)
    total.interrupted, total.peer = True, f"{len(served)} senders" if served else ""
    if a.json:
        print(json.dumps(json_doc(cfg.params(), [], {"senders": len(served), "total": total.row()})),
              flush=True)
    else:
        print(totals_line(total, served), flush=True)
    return 130


def totals_line(total: RxResult, served: List[RxResult]) -> str:
    """--keep's last line: how many senders, how much, and how many passed the check."""
    n = len(served)
    counted = f", {total.datagrams} datagrams" if total.datagrams is not None else ""
    if total.discard:
        verdict = "not verified (--discard)"
    elif total.verified is None and not total.unverified:
        verdict = "not verified (--no-verify)" if n else "nothing to verify"
    else:
        failed = sum(1 for r in served if r.verified is False)
        verdict = ("every one verified" if total.verified else f"verification FAILED for {failed} of {n}"
                   if failed else f"not verified: {total.unverified}")
    return (f"total: {n} sender{'s' if n != 1 else ''}, {total.bytes >> 20} MB ({total.bytes} bytes)"
            f"{counted}; {verdict}")


# --- The control connection: one report from both ends ------------------------
#
# The sender's lines say what it handed its kernel; what arrived is known on
# the other box. So the sender and rx talk, as iperf3's client and server do,
# over a control connection: TCP to the data port's number. For UDP data rx
# listens on that TCP port beside its UDP socket; for TCP data the one
# listening socket takes both, and a control connection is told from a data
# connection by its first byte, '{' (a data stream opens with the pattern's
# 'a', or request 0's stamp: 0x00). Each message is one line of JSON,
# parsed by json and nothing else, at most CONTROL_LINE_MAX bytes, every wait
# for one bounded in time:
#
#   sender -> rx   hello: proto, family, size, gso, data ("pattern" or "stamps"), flows, seconds
#   rx -> sender   ready (or busy: serving another sender; or refused: why)
#                  ... the data: datagrams to the UDP port, or `flows` TCP connections ...
#   sender -> rx   done: what it sent (UDP: rx stops at the next pause, not RX_UDP_IDLE_S later)
#   rx -> sender   result: bytes, datagrams, drops, verdict, CPU (rx_summary())
#
# A peer that does not speak it (msg_zerocopy -r, socat, a plain socket)
# refuses the TCP port (a UDP receiver) or leaves the hello unanswered for
# CONTROL_WAIT_S; the sender says so in one note and runs as before. Over TCP
# that connection is already accepted, and a receiver that accepts only one
# (msg_zerocopy -r) has taken it: so it carries the data, after the hello line.
# rx, for its part, serves a sender that sends no hello (the seed's C sender)
# as ever; a TCP connection silent for CONTROL_READ_S is such a sender too.
# While it serves one UDP sender, rx answers every other hello "busy"
# (turning_away()): that sender's datagrams would be refused anyway.

CONTROL_VERSION = 1
CONTROL_LINE_MAX = 1 << 16   # bytes in one message: a result with 1,000 flows' shares fits
CONTROL_WAIT_S = 0.5         # sender: connect + hello + ready; more than a round trip on any path but a satellite's
CONTROL_READ_S = 2.0         # rx: the longest a new connection may take to say its first line
CONTROL_RESULT_S = 3.0       # sender: from "done" to rx's result (rx ends UDP at its next RX_TICK_S pause)
CONTROL_MAX_FLOWS = 4096     # rx: the most flows a hello may announce


class ControlError(Exception):
    """The peer broke the control protocol: what it did, in words for a note line.

    gone: the connection closed or reset; other_version: a sendzc of another
    version; refusal: rx's reason to refuse this sender, in words for it.
    """

    def __init__(self, words: str, gone: bool = False, other_version: bool = False,
                 refusal: Optional[str] = None):
        super().__init__(words)
        self.gone, self.other_version, self.refusal = gone, other_version, refusal


def control_line(kind: str, **fields) -> bytes:
    """One message: a JSON object on one line, with the protocol's name and version."""
    line = json.dumps({"control": "sendzc", "version": CONTROL_VERSION, "type": kind, **fields},
                      separators=(",", ":")).encode() + b"\n"
    assert len(line) <= CONTROL_LINE_MAX, "a control message must fit CONTROL_LINE_MAX"
    return line


def send_control(sock: socket.socket, kind: str, **fields) -> None:
    """Send one message; a peer that has gone is the caller's ControlError."""
    try:
        sock.sendall(control_line(kind, **fields))
    except OSError as e:
        raise ControlError(f"closed the control connection ({errno.errorcode.get(e.errno, e)})",
                           gone=True) from None


def read_line(sock: socket.socket, deadline: float) -> bytes:
    """One line (without its newline), by deadline (time.monotonic()); never a byte past it.

    Peeks first and takes only up to the newline: what follows on a TCP data
    connection that began with a hello is data. A line longer than
    CONTROL_LINE_MAX is refused after that many bytes, whatever its length.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        try:
            data = sock.recv(CONTROL_LINE_MAX, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = None
        except OSError as e:
            raise ControlError(f"reset the control connection ({errno.errorcode.get(e.errno, e)})",
                               gone=True) from None
        if data is not None:
            end = data.find(b"\n")
            if end >= 0:
                return sock.recv(end + 1)[:end]
            if len(data) >= CONTROL_LINE_MAX:
                raise ControlError(f"sent a line longer than {CONTROL_LINE_MAX} bytes")
            if not data:
                raise ControlError("closed the control connection", gone=True)
        left = deadline - time.monotonic()
        if left <= 0 or STOP.hurry:
            raise ControlError("sent half a line, then nothing" if data else "said nothing in time")
        if data:                          # part of a line: poll() would say "readable" at once
            time.sleep(min(left, 0.01))
        else:
            poller.poll(max(1, int(min(left, RX_TICK_S) * 1000)))


def shown(value) -> str:
    """A peer's value, quoted and cut short, for a line of ours (it is data, never trusted)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def control_message(line: bytes, *kinds: str) -> dict:
    """The message a line holds, if it is one of kinds in this version; else ControlError."""
    try:
        msg = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ControlError(f"sent {shown(line[:40].decode('utf-8', 'replace'))}, which is not JSON") from None
    if not isinstance(msg, dict) or msg.get("control") != "sendzc":
        raise ControlError(f"sent JSON that is not sendzc's control message ({shown(msg)})")
    if msg.get("version") != CONTROL_VERSION:
        raise ControlError(f"speaks control version {shown(msg.get('version'))}, this sendzc "
                           f"{CONTROL_VERSION}: run the same sendzc.py on both hosts", other_version=True)
    if msg.get("type") not in kinds:
        raise ControlError(f"sent {shown(msg.get('type'))} where {or_list(kinds)} belongs")
    return msg


def count_field(msg: dict, name: str, optional: bool = False):
    """msg[name], if it is a count (an int >= 0) or, when optional, None; else ControlError."""
    value = msg.get(name)
    if value is None and optional:
        return None
    if type(value) is not int or value < 0:
        raise ControlError(f"sent {name} = {shown(value)}, not a count")
    return value


# The sender's end.

class ControlLink:
    """The sender's end of the control connection: open_control() makes it, finish_control() ends it.

    ready: rx said ready, and owes us its result. note: why this report will
    be the sender's alone (one line), when it will.
    """

    def __init__(self, cfg: SendConfig):
        self.proto, self.port, self.where = cfg.proto, cfg.port, host_port(cfg.addr, cfg.port)
        self.sock: Optional[socket.socket] = None
        self.ready = False
        self.note: Optional[str] = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def control_hello(cfg: SendConfig) -> dict:
    """What is coming, for rx to receive and check it as sent."""
    return dict(proto=cfg.proto, family=family_name(cfg.family), size=cfg.size, gso=cfg.gso or None,
                data="stamps" if cfg.pool else "pattern", flows=cfg.flows, seconds=cfg.seconds)


def open_control(cfg: SendConfig) -> ControlLink:
    """Say hello to rx on the data port's number over TCP; CONTROL_WAIT_S at most for its answer."""
    link = ControlLink(cfg)
    if cfg.sink is not None or cfg.proto == "raw":
        return link                       # bench's sink drops everything: nobody to ask
    deadline = time.monotonic() + CONTROL_WAIT_S
    sock = socket.socket(cfg.family, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONTROL_WAIT_S)
        sock.connect((cfg.addr, cfg.port))
        # Blocking again: io_uring sends on it as on any socket if it must carry the
        # data (O_NONBLOCK off), and read_line() waits in poll(), not in recv().
        sock.settimeout(None)
        sock.sendall(control_line("hello", **control_hello(cfg)))
        reply = control_message(read_line(sock, deadline), "ready", "busy", "refused")
    except (OSError, ControlError) as e:
        link.note = control_fallback(cfg, link, sock, e)
        return link
    if reply["type"] != "ready":
        sock.close()
        if reply["type"] == "busy":
            raise Fatal(f"the receiver at {link.where} is busy with another sender "
                        f"({printable(reply.get('serving'))}): `sendzc.py rx` serves one at a time: "
                        f"start this one when that one is done")
        raise Fatal(f"the receiver at {link.where} refused this run: {printable(reply.get('why'))}")
    link.sock, link.ready = sock, True
    return link


def control_fallback(cfg: SendConfig, link: ControlLink, sock: socket.socket, e: Exception) -> Optional[str]:
    """No ready came: the note that says so; over TCP, a connection the peer took carries the data."""
    alone = "this report is the sender's alone"
    connected = isinstance(e, ControlError) and not e.gone and not e.other_version
    if cfg.proto == "tcp" and connected:  # it took the connection, then said nothing (or no sendzc)
        link.sock = cfg.data_sock = sock
        hello = len(control_line("hello", **control_hello(cfg)))
        return (f"the receiver at {link.where} {e} on sendzc's control connection (not `sendzc.py rx`?): "
                f"the data went over that connection, after the {hello}-byte hello line; {alone}")
    sock.close()
    if isinstance(e, ControlError):
        return (f"the receiver at {link.where} {e}" + ("" if e.other_version else
                " on sendzc's control connection (not `sendzc.py rx`?)") + f": {alone}")
    if cfg.proto == "tcp":
        return None                       # the data connection meets the same refusal, and names it
    if e.errno == errno.ECONNREFUSED:
        return f"no sendzc rx at {link.where} (TCP port {cfg.port} refused the control connection): {alone}"
    why = "in time" if isinstance(e, socket.timeout) else f"({errno.errorcode.get(e.errno, e)})"
    return f"no sendzc rx answered at {link.where} (TCP port {cfg.port}) {why}: {alone}"


def printable(value) -> str:
    """A peer's words (a str) for a line of ours: printable characters only, cut short."""
    if not isinstance(value, str):
        return shown(value)
    text = "".join(c for c in value[:300] if c.isprintable())
    return text if len(value) <= 300 else text + "..."


def finish_control(link: ControlLink, result: Result) -> None:
    """After the run: tell rx what was sent, and join its result (result.receiver) or say why not."""
    result.receiver_note = link.note
    try:
        if link.ready:
            send_control(link.sock, "done", bytes=result.bytes, datagrams=result.datagrams,
                         requests=result.requests)
            msg = control_message(read_line(link.sock, time.monotonic() + CONTROL_RESULT_S), "result")
            result.receiver = joined(result, msg, link.where)
    except ControlError as e:
        result.receiver_note = f"the receiver's result is missing: rx at {link.where} {e} (did it stop?)"
        result.receiver_missing = True
    finally:
        link.close()


def seconds_field(msg: dict, name: str) -> float:
    value = msg.get(name)
    if type(value) not in (int, float) or not 0 <= value < 1e9:
        raise ControlError(f"sent {name} = {shown(value)}, not a time in seconds")
    return float(value)


def joined(sent: Result, msg: dict, where: str) -> dict:
    """rows[0].receiver: rx's result, checked field by field, beside what was sent."""
    got, datagrams = count_field(msg, "bytes"), count_field(msg, "datagrams", True)
    verified = msg.get("verified")
    flows = msg.get("flows")
    if verified not in (True, False, None):
        raise ControlError(f"sent verified = {shown(verified)}, not true, false or null")
    if flows is not None and (not isinstance(flows, list) or len(flows) > CONTROL_MAX_FLOWS):
        raise ControlError(f"sent flows = {shown(flows)}, not a list of counts")
    r = {"at": where, "bytes": got, "datagrams": datagrams, "lost": None, "missing": None,
         "dropped": count_field(msg, "dropped", True), "verified": verified,
         "unverified": printable(msg["unverified"]) if msg.get("unverified") else None,
         "mismatches": count_field(msg, "mismatches"), "seconds": seconds_field(msg, "seconds"),
         "cpu_user_s": seconds_field(msg, "cpu_user_s"), "cpu_sys_s": seconds_field(msg, "cpu_sys_s"),
         "error": printable(msg["error"]) if msg.get("error") else None,
         "flows": [count_field({"flow": b}, "flow") for b in flows] if flows else None}
    cpu = r["cpu_user_s"] + r["cpu_sys_s"]
    r["mb_per_cpu_s"] = round(got / MIB / cpu, 1) if cpu > 0 else None
    if sent.proto == "udp" and datagrams is not None:
        r["lost"] = sent.datagrams - datagrams
    elif sent.proto == "tcp":
        r["missing"] = sent.bytes - got
    return r


def describe_receiver(r: Result) -> List[str]:
    """The joined report's line: what the receiver got, its verdict, each host's CPU."""
    g = r.receiver
    if g is None:
        return [f"note: {r.receiver_note}"] if r.receiver_note else []

    def cpu(user: float, sys_: float, nbytes: int) -> str:
        rate = f"{nbytes / MIB / (user + sys_):.0f}" if user + sys_ > 0 else "-"
        return f"user {user:.2f} s sys {sys_:.2f} s, {rate} MB per CPU-second"
    return [f"receiver: {receiver_got(r)}; cpu: sender {cpu(r.cpu_user_s, r.cpu_sys_s, r.bytes)}; "
            f"receiver {cpu(g['cpu_user_s'], g['cpu_sys_s'], g['bytes'])}"]


def receiver_got(r: Result) -> str:
    """What the receiver got of r (r.receiver, joined()), and its verdict."""
    g = r.receiver
    mb = f"{g['bytes'] >> 20} MB"
    if g["datagrams"] is not None:
        share = f"{100 * g['lost'] / r.datagrams:.2f}%" if r.datagrams else "-"
        # SO_RXQ_OVFL counts packets: a GSO packet that GRO kept whole (veth) is dropped, and counted, once.
        drops = ("" if g["dropped"] is None else
                 f"; its full socket buffer dropped {g['dropped']} GSO packets of up to "
                 f"{segments_per_send(r.size, r.gso)} datagrams" if r.gso else
                 f"; {g['dropped']} dropped by its full socket buffer")
        what = f"{g['datagrams']} of {r.datagrams} datagrams ({mb}), {g['lost']} lost ({share}{drops})"
    else:
        missing = f", {g['missing']} missing" if g["missing"] else ""
        what = f"{g['bytes']} of {r.bytes} bytes ({mb}){missing}"
    if g["flows"]:
        what += f" in {len(g['flows'])} flows (" + ", ".join(f"{b >> 20}" for b in g["flows"]) + " MB)"
    verdict = ("verified" if g["verified"] else f"not verified ({g['unverified'] or 'rx did not check'})"
               if g["verified"] is None else f"verification FAILED ({g['mismatches']} differ)")
    return f"{what}, {verdict}"


def receiver_failure(r: Result) -> Optional[str]:
    """Why the joined run fails (exit 1): rx's check failed, TCP bytes went missing, or its result did."""
    g = r.receiver
    if r.receiver_missing:
        return r.receiver_note
    if g is None:
        return None
    if g["verified"] is False:
        return f"the receiver at {g['at']} says: {g['error'] or 'verification failed'}"
    if g["missing"]:
        return (f"the receiver at {g['at']} got {g['bytes']} of the {r.bytes} bytes sent: "
                f"{g['missing']} never arrived over TCP")
    return None


# rx's end.

class ControlPeer:
    """rx's end of one sender's control connection, from its hello to the result sent back."""

    def __init__(self, conn: socket.socket, addr: tuple, hello: dict):
        self.conn, self.peer, self.hello = conn, peer_name(addr)[1], hello
        self.done: Optional[dict] = None    # the sender's "done", once read
        self.gone: Optional[str] = None     # how the control connection broke, if it did

    def ended(self) -> bool:
        """receive()'s question at each pause in the data: has the sender said done (or gone)?"""
        if self.done is None and self.gone is None and select.select([self.conn], [], [], 0)[0]:
            try:
                self.done = control_message(read_line(self.conn, time.monotonic() + CONTROL_READ_S), "done")
            except ControlError as e:
                self.gone = str(e)
        return self.done is not None or self.gone is not None

    def report(self, cfg: RxConfig, results: List[RxResult], total: RxResult) -> None:
        """Send the result, close; a sender gone by now is one line on stderr, not a failure of rx."""
        try:
            if self.gone is None:
                send_control(self.conn, "result", **rx_summary(cfg, results, total))
        except ControlError as e:
            self.gone = str(e)
        finally:
            self.conn.close()
        if self.gone is not None:
            rx_note(f"the sender at {self.peer} {self.gone}: its report lacks this side")


def rx_note(line: str) -> None:
    """One line of rx's on stderr (stdout may be JSON)."""
    print(f"rx: {line}", file=sys.stderr, flush=True)


def rx_summary(cfg: RxConfig, results: List[RxResult], total: RxResult) -> dict:
    """What the sender's joined report needs of rx's result: counts, verdict, CPU (getrusage)."""
    unverified = ("--discard" if cfg.discard else "--no-verify" if not cfg.verify
                  else "nothing to verify" if total.verified is None else None)
    return dict(bytes=total.bytes, datagrams=total.datagrams, dropped=total.dropped, verified=total.verified,
                unverified=unverified, mismatches=total.mismatches, error=total.error,
                # (to the microsecond: the sender's text rounds as rx's own lines do)
                seconds=round(total.seconds, 6), cpu_user_s=round(total.cpu_user_s, 6),
                cpu_sys_s=round(total.cpu_sys_s, 6), interrupted=total.interrupted,
                flows=[r.bytes for r in results] if len(results) > 1 else None)


@dataclass
class Arrival:
    """The next sender, as next_sender() found it: the config to serve it with, its control
    connection (None: a sender that does not speak it), its first connection or datagram's source."""
    cfg: RxConfig
    control: Optional[ControlPeer] = None
    first: Optional[tuple] = None       # TCP: (conn, addr); UDP: the first datagram's addr


def control_listener(cfg: RxConfig, sock: socket.socket) -> Optional[socket.socket]:
    """rx udp: a TCP socket on the data port's number, for the control connections; None if refused."""
    ctl = socket.socket(sock.family, socket.SOCK_STREAM)
    try:
        if sock.family == socket.AF_INET6:
            ctl.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(cfg.family is not None))
        ctl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ctl.bind(sock.getsockname()[:2])
        ctl.listen(socket.SOMAXCONN)
    except OSError as e:
        ctl.close()
        rx_note(f"no control connection on TCP port {cfg.port} ({errno.errorcode.get(e.errno, e)}): "
                f"senders will report their own side alone")
        return None
    return ctl


def check_hello(cfg: RxConfig, hello: dict) -> RxConfig:
    """The config this sender's hello asks for (its data and flows), or ControlError saying why not."""
    proto, data, flows = hello.get("proto"), hello.get("data"), hello.get("flows")
    if proto != cfg.proto:
        raise ControlError(f"sends {shown(proto)}, and this is `sendzc.py rx {cfg.proto}`",
                           refusal=f"it is `sendzc.py rx {cfg.proto}`: start `sendzc.py rx {proto}` there"
                           if proto in ("udp", "tcp") else f"it receives {cfg.proto}")
    if data not in ("pattern", "stamps"):
        raise ControlError(f"sends data {shown(data)}, neither the pattern nor --pool stamps")
    if type(flows) is not int or not 1 <= flows <= (1 if proto == "udp" else CONTROL_MAX_FLOWS):
        takes = ("one flow (every UDP flow arrives on its one socket): drop -n" if proto == "udp"
                 else f"1 to {CONTROL_MAX_FLOWS} flows")
        raise ControlError(f"announces {shown(flows)} flows", refusal=f"`sendzc.py rx {proto}` takes {takes}")
    try:
        check_flows(flows, rx=True)     # what this host runs at once, as rx's own -n is held to
    except UsageError as e:
        raise ControlError(f"announces {flows} flows", refusal=f"on its host, {e}") from None
    return replace(cfg, pool=data == "stamps", flows=flows)


def greet(cfg: RxConfig, conn: socket.socket, addr: tuple) -> Optional[Arrival]:
    """A connection that opened with '{': its hello, answered. None (closed, said on stderr) if bad.

    A hello followed at once by data is a sender that gave up waiting for our
    ready (we were busy): it sends its stream on this connection (ControlLink).
    """
    peer = peer_name(addr)[1]
    try:
        hello = control_message(read_line(conn, time.monotonic() + CONTROL_READ_S), "hello")
        mine = check_hello(cfg, hello)
        if mine.proto == "tcp" and select.select([conn], [], [], 0)[0]:
            if not opening_byte(conn):
                raise ControlError("closed the control connection after its hello", gone=True)
            return Arrival(mine, None, (conn, addr))
        send_control(conn, "ready")
    except ControlError as e:
        if e.refusal or e.other_version:
            with suppress(ControlError):
                send_control(conn, "refused", why=e.refusal or f"it speaks control version {CONTROL_VERSION}: "
                                                               f"run the same sendzc.py on both hosts")
        conn.close()
        rx_note(f"the sender at {peer} {e}: closed its control connection")
        return None
    return Arrival(mine, ControlPeer(conn, addr, hello))


def opening_byte(conn: socket.socket) -> bytes:
    """A new TCP connection's first byte, peeked (b"" at once-closed, or silent for CONTROL_READ_S)."""
    if not select.select([conn], [], [], CONTROL_READ_S)[0]:
        return b""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return b""                  # reset already: receive() says so as for any sender


def next_tcp_sender(cfg: RxConfig, sock: socket.socket) -> Optional[Arrival]:
    """The next TCP sender: a control connection's hello, answered, or a data connection that
    does not speak it (the seed's C sender, socat): served as ever. None on Ctrl-C."""
    while True:
        got = until_stop(sock.accept)
        if got is None:
            return None
        if opening_byte(got[0]) != b"{":
            return Arrival(cfg, None, got)
        arrival = greet(cfg, *got)
        if arrival is not None:
            return arrival


def next_udp_sender(cfg: RxConfig, sock: socket.socket, ctl: Optional[socket.socket]) -> Optional[Arrival]:
    """The next UDP sender: its first datagram (the seed's C sender), or a control connection's
    hello, then that sender's first datagram. None on Ctrl-C."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if ctl is not None:
        poller.register(ctl, select.POLLIN)
    while not STOP.requested:
        ready = {fd for fd, _ in poller.poll(int(RX_TICK_S * 1000))}
        if sock.fileno() in ready:
            addr = until_stop(lambda: sock.recvfrom(1, socket.MSG_PEEK)[1])
            return addr and Arrival(cfg, None, addr)
        if ctl is not None and ctl.fileno() in ready:
            conn, addr = ctl.accept()
            arrival = greet(cfg, conn, addr)
            if arrival is not None and first_datagram(sock, arrival):
                return arrival
    return None


def first_datagram(sock: socket.socket, arrival: Arrival) -> bool:
    """Wait for a greeted sender's first datagram (arrival.first); False if it left first."""
    control = arrival.control
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(control.conn, select.POLLIN)
    while not STOP.requested:
        ready = {fd for fd, _ in poller.poll(int(RX_TICK_S * 1000))}
        if sock.fileno() in ready:
            arrival.first = until_stop(lambda: sock.recvfrom(1, socket.MSG_PEEK)[1])
            return arrival.first is not None
        if control.conn.fileno() in ready and control.ended():
            rx_note(f"the sender at {control.peer} ended before its first datagram came")
            break
    control.report(arrival.cfg, [], new_result(arrival.cfg))
    return False


@contextmanager
def turning_away(ctl: Optional[socket.socket], serving: str) -> Iterator[None]:
    """rx udp: while one sender is served, a thread answers every other one's hello "busy".

    Its data would be refused anyway: a connected UDP socket takes only its
    peer's datagrams, and the kernel answers the others' with an ICMP port
    unreachable (ECONNREFUSED at the sender). Better the sender hear why.
    """
    if ctl is None:
        yield
        return
    stop = threading.Event()

    def doorman() -> None:
        while not stop.is_set():
            if not select.select([ctl], [], [], RX_TICK_S)[0]:
                continue
            try:
                conn, addr = ctl.accept()
            except OSError:
                continue
            with conn:
                with suppress(ControlError):
                    control_message(read_line(conn, time.monotonic() + CONTROL_WAIT_S), "hello")
                    send_control(conn, "busy", serving=serving)
            rx_note(f"turned away the sender at {peer_name(addr)[1]}: busy with {serving} "
                    f"(one sender at a time)")
    door = threading.Thread(target=doorman, name="rx-door", daemon=True)
    door.start()
    try:
        yield
    finally:
        stop.set()
        door.join()


# =============================================================================
# 10. The benchmark
#
# `sendzc.py bench` is the 2021 RFC's table, measured on this host: every way
# to send, each for -t seconds into the same sink, and how each compares with
# MSG_ZEROCOPY, the baseline the RFC measured io_uring against.
#
# The sink. Sending to a NIC measures the NIC; over loopback or veth, the
# receiver's copy, which turns zero-copy back into a copy. The RFC sent UDP to
# a dummy device, which drops every packet at the end of the whole transmit
# path. This kernel may lack the dummy driver, but ifb does the same for packets
# routed out of it: ifb_xmit() drops any that tc did not redirect to it. So
# bench unshares a network namespace of its own with an ifb device in it, MTU
# 65535 so that a 64 KB datagram is one packet (at 1500 it would be 45
# fragments, and every fragmented send is copied), and sends to a second
# address on its subnet. The root qdisc is noqueue, as on dummy: ifb's default
# pfifo_fast costs every packet an enqueue and a dequeue (15-18% of the rate at
# 64 KB). The namespace has no name: however the process ends (error, Ctrl-C,
# kill -9), the kernel tears it down with the device in it.
#
# Each row is a fresh socket (and ring) sending for -t seconds; rates divide by
# the measured time and CPU comes from getrusage(): user time is this process
# outside the kernel (Python, ctypes, libc), sys time the kernel's send path.
# =============================================================================

BENCH_SECONDS = 3.0                  # per row; the default table (11 rows) takes ~35 s
BENCH_SIZES = [SEED_MAX_PAYLOAD]     # the RFC's 65435 bytes
BENCH_BATCHES = [1, 8]               # the RFC's nr_reqs values
BENCH_ENTRIES = 512                  # SQ ring entries, as the seed's io_uring_queue_init(512)
# speedup 1.00: MSG_ZEROCOPY, poll() after every send as the selftest msg_zerocopy.c: the RFC's baseline.
BASELINE_MODE = "msg_zerocopy_poll"
SYSCALL_MODES = ("send_syscall", "msg_zerocopy", "msg_zerocopy_poll")
# ..._flush: -f, each batch waits for its own notifications (the RFC's @flush=true)
URING_MODES = ("send", "send_zc", "send_zc_fixed", "send_zc_fixed_flush")
COPY_MODES = ("send_syscall", "send")
# --sweep: the io_uring zero-copy path alone, with and without SQPOLL: where batching stops paying.
SWEEP_SECONDS = 1.0
SWEEP_SIZES = [1400, 4096, 16384, SEED_MAX_PAYLOAD]
SWEEP_BATCHES = [1, 2, 4, 8, 16, 32, 64]
SWEEP_MODES = ("send_zc_fixed", "send_zc_fixed_sqpoll")
KNEE_MARGIN = 0.95                   # the knee: the smallest batch within this much of its mode's best
MODE_LABELS = {"send_syscall": "send(2)", "msg_zerocopy": "send(2) MSG_ZEROCOPY",
               "msg_zerocopy_poll": "MSG_ZEROCOPY, poll() per send", "send": "io_uring SEND",
               "send_zc": "io_uring SEND_ZC", "send_zc_fixed": "io_uring SEND_ZC fixed buf",
               "send_zc_fixed_flush": "io_uring SEND_ZC fixed -f",
               "send_zc_fixed_sqpoll": "io_uring SEND_ZC fixed + SQPOLL"}
# Where zero-copy starts to pay: each zero-copy way against its copying twin, and its name.
CROSSOVER_PAIRS = {"io_uring": (("send_zc", "send_zc_fixed"), ("send",), "io_uring SEND_ZC vs SEND"),
                   "msg_zerocopy": (("msg_zerocopy",), ("send_syscall",), "MSG_ZEROCOPY vs send(2)")}
# "Pays": at least this much faster; a closer win is within the noise between two rows, and random.
CROSSOVER_MARGIN = 1.05
BAR_WIDTH = 40                       # characters of the fastest row's bar
CLEAR_EOL = "\033[K"                 # ANSI: erase to the end of the line (the progress line)
PROGRESS_EVERY_S = 1.0               # how often the progress line counts down
# A sender into the sink never waits: a row on a CPU less of its time than this shared the CPU (or
# waited for a receiver); its MB/s understates it, its CPU s/GB does not.
ON_CPU_MIN = 0.9

# The private sink: an ifb device and two addresses on it, in our own namespace.
SINK_DEV = "ifb0"
SINK_MTU = IP_MAXPACKET              # the largest MTU: a 64 KB datagram is one packet
SINK_NET4, SINK_DST4 = "198.18.0.1/24", "198.18.0.2"    # RFC 2544's benchmarking range
SINK_NET6, SINK_DST6 = "2001:2::1/64", "2001:2::2"      # RFC 5180's
DEFAULT_QDISC = "noqueue"            # as on the RFC's dummy device
KEEP_QDISC = "default"               # --qdisc default: leave the kernel's choice
NO_SINK_HINT = ("or measure against a receiver instead, with no private sink and no root: "
                "`python3 sendzc.py bench -D ADDR` (`sendzc.py rx --keep udp` running at ADDR)")
IPV6_MIN_MTU = 1280                  # RFC 8200: below it a device has no IPv6
IPV4_MIN_MTU = 68                    # RFC 791: every IPv4 host takes 68-byte packets


@dataclass
class Sink:
    """What private_sink() made, for the report."""
    dev: str
    mtu: int
    qdisc: str


@contextmanager
def private_sink(qdisc: str, mtu: int = SINK_MTU, who: str = "bench",
                 hint: str = NO_SINK_HINT) -> Iterator[Sink]:
    """Enter a network namespace of our own holding an ifb sink; leave it on the way out. Nothing else
    sees it (`ip netns` lists only named ones); once setns(2) has taken us home and every row's socket
    is closed, the kernel frees it with its device. The sender without -D comes here too (who, hint)."""
    def step(*args: str, refused: Optional[Callable[[str], str]] = None) -> str:
        """Run one iproute2 command (in our namespace): its output, or one line that ends the run."""
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode:
            if STOP.requested:            # Ctrl-C reached the command too: no fault of the command
                raise Fatal("interrupted while making the private sink", 130)
            why = (done.stderr.strip().splitlines() or ["failed"])[-1]
            raise Fatal(f"{who}: " + (refused(why) if refused else f"`{' '.join(args)}`: {why}"))
        return done.stdout

    if shutil.which("ip") is None:
        raise Fatal(f"{who}: the private sink is made with iproute2's `ip`, which is not installed "
                    f"(apt install iproute2); {hint}")
    with ExitStack() as stack:
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        stack.callback(os.close, home)
        try:
            unshare(CLONE_NEWNET)
        except OSError as e:
            if e.errno == errno.EPERM:
                run = "`sudo python3 sendzc.py bench`" if who == "bench" else "it as root (sudo)"
                raise Fatal(f"{who}: the private sink (a network namespace with an ifb device) needs "
                            f"root: run {run}, {hint}") from None
            raise Fatal(f"{who}: unshare(CLONE_NEWNET) failed: {e.strerror}; {hint}") from None
        stack.callback(setns, home, CLONE_NEWNET)
        step("ip", "link", "set", "lo", "up")
        step("ip", "link", "add", SINK_DEV, "type", "ifb", refused=lambda why: (
            f"no ifb device here (`ip link add type ifb`: {why}): the private sink needs the ifb driver "
            f"(CONFIG_IFB); {hint}"))
        step("ip", "link", "set", SINK_DEV, "mtu", str(mtu), "up")
        step("ip", "addr", "add", SINK_NET4, "dev", SINK_DEV)
        # nodad: usable at once, no duplicate address detection. Below IPv6's minimum MTU: IPv4 only.
        if mtu >= IPV6_MIN_MTU:
            step("ip", "-6", "addr", "add", SINK_NET6, "dev", SINK_DEV, "nodad")
        if qdisc != KEEP_QDISC:
            if shutil.which("tc") is None:
                raise Fatal(f"bench: --qdisc {qdisc} needs iproute2's tc, which is not installed "
                            f"(apt install iproute2), or pass --qdisc {KEEP_QDISC}")
            step("tc", "qdisc", "replace", "dev", SINK_DEV, "root", qdisc)
        # Report the qdisc the kernel says is there, not the one we asked for.
        words = step("ip", "-o", "link", "show", "dev", SINK_DEV).split()
        yield Sink(SINK_DEV, mtu, words[words.index("qdisc") + 1] if "qdisc" in words[:-1] else "unknown")


# --- Running the rows ----------------------------------------------------------

@dataclass
class BenchConfig:
    """The options of `sendzc.py bench`, checked."""
    proto: str
    family: int
    addr: Optional[str]              # -D: a receiver; None: the private sink
    port: int
    sizes: List[int]
    batches: List[int]
    seconds: float
    interval: Optional[float]
    as_json: bool
    qdisc: str
    sweep: bool                      # --sweep: the zero-copy path across batches, not the RFC table
    mtu: int                         # --mtu: the private sink's MTU
    sizes_given: bool                # --sizes was given (else a fragmenting path adds its largest datagram)
    path_mtu: Optional[int] = None   # the route's MTU to the destination, read after connect (UDP)
    groups: List[Tuple[int, int]] = field(default_factory=list)   # (size, gso) of each table
    lacking: Dict[str, str] = field(default_factory=dict)   # mode -> the release it needs (lacking_modes)

    def plan(self) -> List[Tuple[str, int]]:
        """(mode, batch) of every row of one size's table, in the RFC's order."""
        if self.sweep:
            modes = SWEEP_MODES if platform.machine() == "x86_64" else SWEEP_MODES[:1]
            return [(m, b) for m in modes for b in self.batches]
        return [(m, 1) for m in SYSCALL_MODES] + [(m, b) for m in URING_MODES for b in self.batches]


class Progress:
    """Which row, and about how long is left: one line on stderr, redrawn in place, on a terminal only."""

    def __init__(self, rows: int, seconds: float):
        self.on, self.rows, self.seconds = sys.stderr.isatty(), rows, seconds
        self.index, self.label, self.started = -1, "", 0.0

    def draw(self, label: Optional[str] = None) -> None:
        """Redraw the line; with a label, for the next row, whose clock starts now."""
        if label is not None:
            self.index, self.label, self.started = self.index + 1, label, time.monotonic()
        this_row = max(0.0, self.seconds - (time.monotonic() - self.started))
        left = (self.rows - self.index - 1) * self.seconds + this_row
        self.clear(f"sendzc bench: row {self.index + 1} of {self.rows}, {self.label}: "
                   f"about {-(-left // 1):.0f} s left")

    def clear(self, line: str = "") -> None:
        if self.on:
            sys.stderr.write(f"\r{line}{CLEAR_EOL}")
            sys.stderr.flush()


def bench_groups(cfg: BenchConfig) -> List[Tuple[int, int]]:
    """(size, gso) of every table: each size as asked and, where the path fragments it (bench --mtu 1500,
    -D over an ordinary network), again with UDP GSO at the largest unfragmented datagram, which without
    --sizes gets its own table too: the three ways a 64 KB-a-send application can go on such a path."""
    if cfg.proto != "udp" or cfg.sweep or cfg.path_mtu is None:
        return [(size, 0) for size in cfg.sizes]
    fits = largest_datagram(cfg.path_mtu, cfg.family)
    if not cfg.sizes_given and max(cfg.sizes) > fits:
        cfg.sizes = sorted({fits, *cfg.sizes})
    for size in cfg.sizes:
        if size > fits:
            check_segments(size, fits, status=1)
    return [(size, gso) for size in cfg.sizes for gso in ((0, fits) if size > fits else (0,))]


def run_row(cfg: BenchConfig, dst: str, size: int, gso: int, mode: str, batch: int, payload: Payload,
            progress: Progress, label: str, ask: bool = False, served: bool = False) -> Result:
    """One row: a fresh socket (and ring), cfg.seconds of sending, torn down in reverse.

    ask: say hello to the receiver (-D) on the control connection, as a
    single run does, so that it counts this row and ends it at our "done";
    served: it counted the rows before, so it must answer this one too.
    """
    send_cfg = SendConfig(proto=cfg.proto, family=cfg.family, addr=dst, port=cfg.port, size=size,
                          batch=batch, zc=mode != "send", fixed_buf=mode.startswith("send_zc_fixed"),
                          entries=BENCH_ENTRIES, seconds=cfg.seconds, sqpoll=mode.endswith("_sqpoll"),
                          gso=gso, flush=mode.endswith("_flush"))
    link = open_control(send_cfg) if ask else ControlLink(send_cfg)
    try:
        if served and not link.ready:
            raise Fatal(f"the receiver at {link.where} counted the rows before this one and is gone: "
                        f"`sendzc.py rx` serves one run and exits: for bench, start it with "
                        f"`sendzc.py rx --keep {cfg.proto}`")
        with ExitStack() as stack:               # the data socket, closed before rx's count is asked for
            result = run_row_data(cfg, send_cfg, mode, payload, progress, label, stack)
        finish_control(link, result)
    finally:
        link.close()
    result.mode = mode                           # the row's name, SQPOLL included
    return result


def run_row_data(cfg: BenchConfig, send_cfg: SendConfig, mode: str, payload: Payload,
                 progress: Progress, label: str, stack: ExitStack) -> Result:
    """run_row()'s sending: the sender the mode names, its -i lines or the progress line."""
    sock = tx_socket(send_cfg)               # (the control connection, if a plain TCP peer took it)
    stack.callback(sock.close)               # last: after the ring has let go of it
    if mode in SYSCALL_MODES:
        sender = SyscallSender(send_cfg, sock, payload, zerocopy=mode != "send_syscall",
                               poll_each=mode == BASELINE_MODE)
    else:
        sender = UringSender(send_cfg, sock, payload, stack)
    ticks = cfg.interval and Intervals(cfg.interval, not cfg.as_json)
    if ticks and not cfg.as_json:
        progress.clear()
        print(f"-- {label}", flush=True)

    def on_tick(nbytes: int, requests: int) -> None:
        progress.clear()                     # an interval line replaces the progress line
        if ticks:
            ticks.start_ns = sender.started_ns   # from the run's own start, as result.seconds
            ticks.report(time.perf_counter_ns(), nbytes, requests)
        progress.draw()
    # Without -i, ticks only count the progress line down.
    tick_s = cfg.interval or (PROGRESS_EVERY_S if progress.on else 0.0)
    result = sender.run(on_tick=on_tick, tick_ns=int(tick_s * 1e9))
    if ticks:                                # the last, partial interval
        progress.clear()
        ticks.start_ns = sender.started_ns
        ticks.report(ticks.start_ns + int(result.seconds * 1e9), result.bytes, result.requests)
        result.intervals = ticks.rows
    return result


def row_label(mode: str, batch: int, size: int, gso: int) -> str:
    return f"{MODE_LABELS[mode]}, batch {batch}, {size} B" + (f", GSO {gso} B" if gso else "")


def lacking_modes(modes: List[str]) -> Dict[str, str]:
    """mode -> "6.0 (IORING_OP_SEND_ZC)": what each io_uring row whose opcode this kernel lacks needs.

    Debian's 5.10 has send(2), MSG_ZEROCOPY and io_uring SEND but no SEND_ZC: its
    comparison is those rows, and one line each for the rest, not a refusal.
    """
    uring = [m for m in modes if m not in SYSCALL_MODES]
    if not uring:
        return {}
    probe = kernel_opcodes()
    out = {}
    for mode in uring:
        op, since = REQUIRED_OPS["send" if mode == "send" else "send_zc"]
        if not probe.has(op):
            out[mode] = f"{since} ({OPCODE_NAMES[op]})"
    return out


def run_bench(cfg: BenchConfig, dst: str) -> Tuple[List[Result], Optional[str]]:
    """Every row of every table until done, an error or Ctrl-C: the rows, and why the run stopped early
    (None if it did not, or if Ctrl-C stopped it: the rows say interrupted)."""
    cfg.lacking = lacking_modes([m for m, _ in cfg.plan()])
    plan = [(m, b) for m, b in cfg.plan() if m not in cfg.lacking]
    progress = Progress(len(plan) * len(cfg.groups), cfg.seconds)
    results: List[Result] = []
    failure = None
    served = False      # -D: the receiver counted every row so far
    with ExitStack() as stack:
        stack.callback(progress.clear)
        for size, gso in cfg.groups:
            if STOP.requested or failure:
                break
            payload = Payload(size, gso)
            stack.callback(payload.close)        # after every row's ring and socket are gone
            for mode, batch in plan:
                if STOP.requested or failure:
                    break
                label = row_label(mode, batch, size, gso)
                progress.draw(label)
                # -D: ask the receiver to count the first row, and each row after one it
                # counted; if it counted none (no rx, or a plain peer), no later row asks.
                ask = cfg.addr is not None and (served or not results)
                try:
                    results.append(run_row(cfg, dst, size, gso, mode, batch, payload, progress, label,
                                           ask, served))
                    served = results[-1].receiver is not None
                    failure = results[-1].error or receiver_failure(results[-1])
                except Fatal as e:               # (130: Ctrl-C while the row connected: STOP says so)
                    failure = None if e.status == 130 else str(e)
                except OSError as e:             # one line, after the rows measured so far
                    failure = oserror_line(e)
    set_speedups(results)
    return results, failure


def set_speedups(results: List[Result]) -> None:
    """speedup: MB/s over the baseline row of the same size and GSO (itself: exactly 1.00);
    sys_speedup the same on the kernel's own rate (MB per second of kernel CPU)."""
    for rate, name in (("mb_per_s", "speedup"), ("mb_per_sys_s", "sys_speedup")):
        base = {(r.size, r.gso): getattr(r, rate) for r in results
                if r.mode == BASELINE_MODE and getattr(r, rate)}
        for r in results:
            ok = (r.size, r.gso) in base and getattr(r, rate) is not None
            setattr(r, name, getattr(r, rate) / base[r.size, r.gso] if ok else None)


def crossover(results: List[Result]) -> Dict[str, Optional[int]]:
    """Per CROSSOVER_PAIRS: the smallest size from which zero-copy beats copying at every larger size.

    Each side is its best row (batch) at that size; beating means by CROSSOVER_MARGIN or more. None:
    zero-copy did not win at the largest size. A size measured both fragmented and with GSO counts by
    its GSO rows: that is how an application would send it on this path.
    """
    with_gso = {r.size for r in results if r.gso}
    results = [r for r in results if r.gso or r.size not in with_gso]
    out: Dict[str, Optional[int]] = {}
    for name, (zc_modes, copy_modes, _) in CROSSOVER_PAIRS.items():
        out[name] = None
        for size in sorted({r.size for r in results}, reverse=True):
            zc = [r.mb_per_s for r in results if r.size == size and r.mode in zc_modes]
            cp = [r.mb_per_s for r in results if r.size == size and r.mode in copy_modes]
            if not (zc and cp) or max(zc) < CROSSOVER_MARGIN * max(cp):
                break
            out[name] = size
    return out


# --- Reporting -----------------------------------------------------------------

def zc_mark(r: Result) -> str:
    """The table's zc column: did the kernel really avoid the copy?"""
    if r.mode in COPY_MODES:
        return "-"                               # copies by design
    if r.zc_copied is None or not r.notifications:
        return "?"                               # the kernel cannot say (no REPORT_USAGE: before 6.2)
    return f"COPIED {100 * r.zc_copied / r.notifications:.0f}%" if r.zc_copied else "yes"


def row_state(r: Result) -> str:
    return " (interrupted)" if r.interrupted else " (failed)" if r.error else ""


def cpu_mark(r: Result) -> str:
    """ (on CPU n%) for a row that spent less than ON_CPU_MIN of its time on a CPU (user + sys over wall)."""
    share = (r.cpu_user_s + r.cpu_sys_s) / r.seconds if r.seconds else 1.0
    return f" (on CPU {share:.0%})" if share < ON_CPU_MIN else ""


def or_dash(value: Optional[float], spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def bar(r: Result, rows: List[Result]) -> str:
    """The row's bar: BAR_WIDTH characters for the fastest of rows."""
    return "#" * round(BAR_WIDTH * r.mb_per_s / (max(x.mb_per_s for x in rows) or 1.0))


def format_table(rows: List[Result]) -> List[str]:
    """One size's rows as the RFC's table, plus CPU, the zc mark and a bar scaled to the fastest.

    Its speedup is the kernel's (sys_speedup), not MB/s's: the baseline pays Python once a send and
    io_uring once a batch, so a ratio of wall-clock rates puts Python's cost in the denominator and
    overstates io_uring (measured: MB/s x 2.67-3.01 where the C tools' ratio was 2.42). MB/s x stays
    beside it."""
    return [f"{'mode':<29} {'batch':>5} {'MB/s':>8} {'Gbit/s':>7} {'speedup':>7} {'user s':>6} {'sys s':>6} "
            f"{'CPU s/GB':>8} {'sys MB/s':>8} {'MB/s x':>6}  zc"] + [
        f"{MODE_LABELS[r.mode]:<29} {r.batch:>5} {r.mb_per_s:>8.0f} {r.gbit_per_s:>7.2f} "
        f"{or_dash(r.sys_speedup, '.2f', 'x'):>7} {r.cpu_user_s:>6.2f} {r.cpu_sys_s:>6.2f} "
        f"{or_dash(r.cpu_s_per_gb, '.3f'):>8} {or_dash(r.mb_per_sys_s, '.0f'):>8} "
        f"{or_dash(r.speedup, '.2f', 'x'):>6}  {zc_mark(r):<11} {bar(r, rows)}{row_state(r)}{cpu_mark(r)}"
        for r in rows]


def bench_header(cfg: BenchConfig, dst: str, sink: Optional[Sink]) -> List[str]:
    fam = family_name_label(family_name(cfg.family))
    return [f"sendzc {VERSION} bench, Linux {platform.release()}: {cfg.proto} over {fam} to {dst} "
            f"port {cfg.port}, {cfg.seconds:g} s per row",
            f"sink: {sink.dev} in a network namespace of its own, MTU {sink.mtu}, qdisc {sink.qdisc}: "
            f"the kernel drops every packet after the whole send path" if sink else
            "no private sink (-D): packets take this host's own routes to the receiver"]


def bench_footer(results: List[Result], sizes: List[int], complete: bool) -> List[str]:
    """What the columns mean, the notes this run earned, and where zero-copy starts to pay."""
    enobufs, eagain, undrained = (sum(getattr(r, k) for r in results)
                                  for k in ("enobufs", "eagain", "undrained"))
    lines = ["",
             "MB/s: 2^20 bytes per second of measured time; Gbit/s: 10^9 bits per second. "
             "sys MB/s: bytes per second of kernel CPU (sys s), the rate the kernel's work alone allows.",
             "speedup: sys MB/s over the MSG_ZEROCOPY, poll() per send row's (the RFC's baseline): the "
             "kernel's work against the kernel's, as a C sender's MB/s nearly is.",
             "MB/s x: the same by MB/s, which Python distorts: the baseline pays Python on every send, "
             "io_uring once a batch, so MB/s x overstates io_uring.",
             "user s: CPU in this process outside the kernel (Python, ctypes, libc); sys s: CPU in the "
             "kernel (getrusage).",
             "CPU s/GB: (user + sys) per 2^30 bytes sent. zc: yes = every completion said zero-copy; "
             "COPIED = the kernel copied instead; ? = this kernel cannot say; - = a copying mode."]
    notes = [
        (any(r.zc_copied for r in results), "note: COPIED rows were not zero-copy: a receiver on this host "
         "(loopback, veth) always copies, and so does a path whose MTU fragments the packet."),
        (any(r.gso for r in results),
         "GSO tables: each send is one request that the kernel cuts into datagrams that "
         "fit the path (UDP_SEGMENT): no IP fragments, so zero-copy holds where the "
         "same sends fragmented are copied."),
        (enobufs, f"note: {enobufs} MSG_ZEROCOPY sends met ENOBUFS (unread completions filled "
                  f"net.core.optmem_max); each was retried after reading the error queue."),
        (eagain, f"note: {eagain} sends found the socket buffer full (EAGAIN) and waited."),
        (any(map(cpu_mark, results)),
         f"note: rows marked (on CPU n%) ran on a CPU less than {ON_CPU_MIN:.0%} of "
         f"their time (other load on this host, or waiting for the receiver): their "
         f"MB/s understates them, their CPU s/GB does not."),
        (undrained, f"warning: {undrained} completions were still outstanding when their socket closed."),
        (len(sizes) > 1 and not complete, "where zero-copy starts to pay: not judged, as the run ended "
                                          "before it had measured every size"),
        (len(sizes) > 1 and complete,
         f"where zero-copy starts to pay on this host (the smallest size from which it is "
         f"{CROSSOVER_MARGIN - 1:.0%} or more faster than copying at every larger size measured, "
         f"best batch of each):")]
    lines += [line for show, line in notes if show]
    if len(sizes) > 1 and complete:
        for name, size in crossover(results).items():
            where = ("not at any size measured" if size is None else f"from {size} B" if size > min(sizes)
                     else f"at every size measured (from {size} B; the crossover is at or below it)")
            lines.append(f"  {CROSSOVER_PAIRS[name][2]}: {where}")
    return lines


def knee(rows: List[Result], rate: Callable[[Result], float]) -> Tuple[Result, Result]:
    """One mode's (knee, best row): the knee is the smallest batch within KNEE_MARGIN of the best rate."""
    best = max(rows, key=rate)
    return min((r for r in rows if rate(r) >= KNEE_MARGIN * rate(best)), key=lambda r: r.batch), best


def format_sweep(rows: List[Result]) -> List[str]:
    """One size's --sweep rows: rate, CPU split, a bar, and each mode's knee."""
    lines = [f"{'mode':<32} {'batch':>5} {'MB/s':>8} {'Gbit/s':>7} {'req/s':>9} {'user s':>6} "
             f"{'sys s':>6} {'user %':>6}  zc"]
    for r in rows:
        cpu = r.cpu_user_s + r.cpu_sys_s
        user = f"{100 * r.cpu_user_s / cpu:.1f}" if cpu else "-"
        lines.append(f"{MODE_LABELS[r.mode]:<32} {r.batch:>5} {r.mb_per_s:>8.0f} {r.gbit_per_s:>7.2f} "
                     f"{r.requests / r.seconds if r.seconds else 0:>9.0f} {r.cpu_user_s:>6.2f} "
                     f"{r.cpu_sys_s:>6.2f} {user:>6}  {zc_mark(r):<4} {bar(r, rows)}")
    for mode in dict.fromkeys(r.mode for r in rows):
        low, best = knee([r for r in rows if r.mode == mode], lambda r: r.mb_per_s)
        lines.append(f"knee, {MODE_LABELS[mode]}: batch {low.batch} ({low.mb_per_s:.0f} MB/s, within "
                     f"{1 - KNEE_MARGIN:.0%} of the best, {best.mb_per_s:.0f} MB/s at batch {best.batch})")
    return lines


# --- The chart: --svg ------------------------------------------------------------
#
# The rows of the tables, drawn: one SVG file with nothing outside it (no script,
# web font or style sheet). Each bar and point carries its row's values in data-*
# attributes, exactly as its JSON row has them, and in a <title> (a browser shows
# it on hover), so a script, and the tests, can hold the chart against --json.
#   one size   a bar per row, as the table's bars, coloured by the zc column
#   --sizes    MB/s and CPU s/GB against the payload size, a line per row label
#   --sweep    MB/s and the user share against the batch, a line per mode, per size

SVG_WIDTH, SVG_FONT = 960, 12        # px: the width every panel spans (a --sweep pair shares it); text
SVG_LEFT, SVG_RIGHT = 80, 24         # px: room for tick labels left of a panel, and after it
SVG_PANEL_HEIGHT, SVG_PANEL_GAP = 260, 110   # px: a line panel's plot; from it to the next (labels, title)
SVG_BAR, SVG_BAR_GAP = 18, 6         # px: one bar, and the space under it
SVG_BAR_LABELS, SVG_BAR_TEXT = 250, 210   # px: row labels left of the bars; figures after the longest
# Told apart by most eyes, colour-blind ones too (Tableau 10, in its order).
SVG_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#9c755f", "#ff9da7",
              "#edc948", "#e15759", "#bab0ac")
SVG_BASELINE = ("#000000", "6 4")    # the MSG_ZEROCOPY series: black, dashed, in every chart
# The zc column's verdicts (zc_mark's first word): a bar's colour, a point's shape, the legend.
SVG_ZC = {"yes": ("#4e79a7", "circle", "zero-copy: every completion said so"),
          "COPIED": ("#e15759", "triangle", "zero-copy asked, but the kernel COPIED"),
          "?": ("#edc948", "diamond", "zero-copy, the kernel cannot say (REPORT_USAGE: 6.2)"),
          "-": ("#bab0ac", "square", "copying, by design")}
# The corners of each marker but the circle (radius 4.5), in px from its centre.
SVG_SHAPES = {"square": ((-4, -4), (4, -4), (4, 4), (-4, 4)), "triangle": ((0, -6), (6, 4.5), (-6, 4.5)),
              "diamond": ((0, -6), (5, 0), (0, 6), (-5, 0))}
# A line panel's value (a field of the JSON row, or user_pct) and its unit in the hover text.
SVG_PANELS = {"mb": ("mb_per_s", "MB/s"), "cpu": ("cpu_s_per_gb", "CPU s/GB"), "user": ("user_pct", "% user")}
SVG_UNITS = ("MB = 2^20 bytes; MB/s per second of each row's measured time, as in the table; "
             "CPU s/GB = (user + sys) CPU seconds per 2^30 bytes sent")
# A label over lines and bars: a white outline under the letters keeps it readable.
SVG_HALO = {"stroke": "#ffffff", "stroke_width": 3, "stroke_linejoin": "round", "paint_order": "stroke"}


class Svg:
    """An SVG document as a list of elements; every attribute value and every text escaped."""

    def __init__(self):
        self.parts: List[str] = []

    def add(self, tag: str, text: str = "", title: str = "", **attrs) -> None:
        """<tag attrs>text</tag>, title its hover text; class_ is class, font_size font-size. A float is
        pixels, to 0.1 px; a row's value (data_*) is written as its JSON row has it."""
        a = "".join(f" {k.rstrip('_').replace('_', '-')}="
                    + quoteattr(f"{v:.1f}" if isinstance(v, float) and not k.startswith("data_") else str(v))
                    for k, v in attrs.items() if v is not None)
        inner = (f"<title>{escape(title)}</title>" if title else "") + escape(text)
        self.parts.append(f"<{tag}{a}>{inner}</{tag}>" if inner else f"<{tag}{a}/>")

    def text(self, x: float, y: float, words: str, **attrs) -> None:
        self.add("text", words, x=x, y=y, **attrs)

    def shape(self, shape: str, x: float, y: float, **style) -> None:
        """A marker centred on x, y: a circle, or SVG_SHAPES' polygon."""
        if shape == "circle":
            self.add("circle", cx=x, cy=y, r=4.5, **style)
        else:
            self.add("polygon", points=" ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in SVG_SHAPES[shape]),
                     **style)

    def document(self, height: float, title: str) -> str:
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height:.0f}" '
                f'viewBox="0 0 {SVG_WIDTH} {height:.0f}" font-family="sans-serif" '
                f'font-size="{SVG_FONT}">\n<title>{escape(title)}</title>\n'
                f'<rect width="100%" height="100%" fill="#ffffff"/>\n'
                + "\n".join(self.parts) + "\n</svg>\n")


@dataclass
class SvgAxis:
    """Values lo..hi onto pixels px0..px1, linear or logarithmic."""
    lo: float
    hi: float
    log: bool
    px0: float
    px1: float

    @classmethod
    def holding(cls, values: List[Optional[float]], log: bool, px0: float, px1: float) -> "SvgAxis":
        """An axis that holds values: from 0 to the most * 1.08 (linear), or padded by 1.3 both ways (log)."""
        positive = [v for v in values if v is not None and v > 0] or [1.0]
        if log:
            return cls(min(positive) / 1.3, max(positive) * 1.3, True, px0, px1)
        return cls(0.0, max(positive) * 1.08, False, px0, px1)

    def __call__(self, v: float) -> float:
        v = min(max(v, self.lo), self.hi)       # a 0 (a row that sent nothing) sits on the axis
        t = (math.log(v / self.lo) / math.log(self.hi / self.lo) if self.log
             else (v - self.lo) / ((self.hi - self.lo) or 1))
        return self.px0 + t * (self.px1 - self.px0)

    def ticks(self) -> List[float]:
        """Round values inside lo..hi: 1, 2, 5 a decade (log), else about 5 steps of 1, 2 or 5 x 10^k."""
        if self.log:
            out, k = [], math.floor(math.log10(self.lo))
            while 10.0 ** k <= self.hi:
                out += [m * 10.0 ** k for m in (1, 2, 5) if self.lo <= m * 10.0 ** k <= self.hi]
                k += 1
            # A narrow span may hold no 1, 2 or 5: then one tick, mid-way, to two digits.
            return out or [float(f"{math.sqrt(self.lo * self.hi):.2g}")]
        step = 10.0 ** math.floor(math.log10((self.hi - self.lo) / 5 or 1))
        step *= next(m for m in (1, 2, 5, 10) if (self.hi - self.lo) / (step * m) <= 6)
        return [i * step for i in range(math.ceil(self.lo / step), math.floor(self.hi / step) + 1)]


def svg_zc(r: Result) -> Tuple[str, str, str]:
    """The (colour, marker, words) of the row's zc verdict."""
    return SVG_ZC[zc_mark(r).split()[0]]


def svg_name(r: Result) -> str:
    """A row's name in the chart: its mode as the table names it, its batch, and a GSO segment if any."""
    return f"{MODE_LABELS[r.mode]}, batch {r.batch}" + (f", GSO {r.gso} B" if r.gso else "")


def svg_value(r: Result, field: str) -> Optional[float]:
    """A value of the row's JSON row; user_pct: the share of its CPU outside the kernel, in % to 0.1."""
    row = r.row()
    if field != "user_pct":
        return row[field]
    cpu = row["cpu_user_s"] + row["cpu_sys_s"]
    return round(100 * row["cpu_user_s"] / cpu, 1) if cpu else None


def svg_row(r: Result, what: str, **more) -> dict:
    """The attributes that tie an element to its JSON row: a hover text and the row's own values."""
    return {"title": f"{svg_name(r)}, {r.size} B: {what}, zc {zc_mark(r)}{row_state(r)}",
            "data_mode": r.mode, "data_batch": r.batch, "data_size": r.size, "data_gso": r.gso,
            "data_mb_per_s": svg_value(r, "mb_per_s"), "data_zc": zc_mark(r), **more}


def svg_series(rows: List[Result], name: Callable[[Result], str]) -> list:
    """(name, rows, colour, dash) of each series, in the table's order: the baseline's look, or the next."""
    out = []
    for i, series in enumerate(dict.fromkeys(map(name, rows))):
        mine = [r for r in rows if name(r) == series]
        look = SVG_BASELINE if mine[0].mode == BASELINE_MODE else (SVG_COLORS[i % len(SVG_COLORS)], None)
        out.append((series, mine, *look))
    return out


def svg_xaxis(svg: Svg, x: SvgAxis, top: float, bottom: float, label: str, ticks: List[float]) -> None:
    """A grid line from top to bottom at each tick, its value under it, and the axis label."""
    for v in ticks:
        svg.add("line", x1=x(v), x2=x(v), y1=top, y2=bottom, stroke="#e4e4e4")
        svg.text(x(v), bottom + 16, f"{v:g}", text_anchor="middle", fill="#444444")
    svg.text((x.px0 + x.px1) / 2, bottom + 34, label, text_anchor="middle", class_="axis-label")


def svg_panel(svg: Svg, series: list, x_of: Callable[[Result], int], panel: str, left: float, right: float,
              top: float, log: bool, title: str, xlabel: str, ylabel: str) -> Tuple[SvgAxis, SvgAxis]:
    """A panel of a line per series through its points, x on a log scale; returns its axes. Each point
    is a marker shaped by its zc verdict, carrying its row's data; a user share runs 0-100 %."""
    field, unit = SVG_PANELS[panel]
    values = [svg_value(r, field) for _, mine, _, _ in series for r in mine]
    xticks = sorted({x_of(r) for _, mine, _, _ in series for r in mine})
    x = SvgAxis.holding(xticks, True, left, right)
    bottom = top + SVG_PANEL_HEIGHT
    y = (SvgAxis(0.0, 100.0, False, bottom, top) if field == "user_pct" else
         SvgAxis.holding(values, log, bottom, top))
    svg.text(left, top - 10, title, font_weight="bold", class_="panel-title")
    for v in y.ticks():
        svg.add("line", x1=left, x2=right, y1=y(v), y2=y(v), stroke="#e4e4e4")
        svg.text(left - 6, y(v) + 4, f"{v:g}", text_anchor="end", fill="#444444")
    svg_xaxis(svg, x, top, bottom, xlabel, xticks)
    svg.add("rect", x=left, y=top, width=right - left, height=bottom - top, fill="none", stroke="#888888")
    middle = (top + bottom) / 2
    svg.text(left - 52, middle, ylabel, text_anchor="middle", class_="axis-label",
             transform=f"rotate(-90 {left - 52:.1f} {middle:.1f})")
    for name, mine, color, dash in series:
        points = sorted((r for r in mine if svg_value(r, field) is not None), key=x_of)
        xy = [(x(x_of(r)), y(svg_value(r, field))) for r in points]
        if len(xy) > 1:
            svg.add("polyline", points=" ".join(f"{a:.1f},{b:.1f}" for a, b in xy), fill="none", stroke=color,
                    stroke_width=2, stroke_dasharray=dash, class_="series", data_series=name)
        for r, (a, b) in zip(points, xy):
            value = svg_value(r, field)
            svg.shape(svg_zc(r)[1], a, b, fill=color, stroke="#222222", stroke_width=0.8, class_="point",
                      **svg_row(r, f"{value} {unit}", data_panel=panel, **{f"data_{field}": value}))
    return x, y


def svg_legend(svg: Svg, top: float, entries: List[Tuple[str, str, Optional[str], str]],
               series: list = ()) -> float:
    """(kind, colour or shape, dash, words) in two columns: kind line, box or marker; a chart of lines
    has its series first, then its markers. Returns the bottom."""
    markers = [("marker", shape, None, f"marker: {words}") for _, shape, words in SVG_ZC.values()]
    entries = [("line", color, dash, name + (" (the baseline)" if mine[0].mode == BASELINE_MODE else ""))
               for name, mine, color, dash in series] + (markers if series else []) + entries
    svg.text(SVG_LEFT, top, "Legend", font_weight="bold", class_="legend-title")
    column = (SVG_WIDTH - SVG_LEFT - SVG_RIGHT) / 2
    for i, (kind, look, dash, words) in enumerate(entries):
        x, y = SVG_LEFT + (i % 2) * column, top + 20 + (i // 2) * 18
        if kind == "line":
            svg.add("line", x1=x, x2=x + 26, y1=y - 4, y2=y - 4, stroke=look, stroke_width=2.5,
                    stroke_dasharray=dash)
        elif kind == "box":
            svg.add("rect", x=x + 4, y=y - 11, width=18.0, height=12.0, fill=look)
        else:
            svg.shape(look, x + 13, y - 4, fill="#999999", stroke="#222222", stroke_width=0.8)
        svg.text(x + 34, y, words, class_="legend")
    return top + 20 + (len(entries) + 1) // 2 * 18


def svg_bars(svg: Svg, top: float, rows: List[Result]) -> float:
    """One size: a bar per row, as the table's, coloured by its zc verdict; the baseline marked."""
    x = SvgAxis.holding([r.mb_per_s for r in rows], False, SVG_BAR_LABELS + 10, SVG_WIDTH - SVG_BAR_TEXT)
    plot_top = top + 26
    bottom = plot_top + len(rows) * (SVG_BAR + SVG_BAR_GAP)
    svg.text(SVG_LEFT, top, "Throughput of every way to send", font_weight="bold", class_="panel-title")
    svg_xaxis(svg, x, plot_top - 4, bottom, "MB/s (MB = 2^20 bytes)", x.ticks())
    for i, r in enumerate(rows):
        y, mb = plot_top + i * (SVG_BAR + SVG_BAR_GAP), svg_value(r, "mb_per_s")
        svg.text(SVG_BAR_LABELS, y + 13, svg_name(r), text_anchor="end", class_="bar-label")
        svg.add("rect", x=x(0), y=y, width=x(mb) - x(0), height=float(SVG_BAR), fill=svg_zc(r)[0],
                class_="bar", **svg_row(r, f"{mb} MB/s"))
    for n, r in enumerate(r for r in rows if r.mode == BASELINE_MODE):   # over the bars, under the figures
        mb = svg_value(r, "mb_per_s")
        svg.add("line", x1=x(mb), x2=x(mb), y1=plot_top - 8, y2=bottom, stroke=SVG_BASELINE[0],
                stroke_dasharray=SVG_BASELINE[1], stroke_width=1.5, class_="baseline",
                title=svg_row(r, f"{mb} MB/s")["title"])
        if n == 0:                              # (one label: several tables' lines would crowd it)
            svg.text(x(mb), plot_top - 12, "MSG_ZEROCOPY baseline (speedup 1.00x)", text_anchor="middle",
                     class_="baseline-label")
    for i, r in enumerate(rows):
        mb = svg_value(r, "mb_per_s")
        speedup = "" if r.sys_speedup is None else f" {r.sys_speedup:.2f}x"     # the table's speedup
        svg.text(x(mb) + 6, plot_top + i * (SVG_BAR + SVG_BAR_GAP) + 13,
                 f"{mb:.0f} MB/s{speedup}  zc {zc_mark(r)}{row_state(r)}", class_="bar-value", **SVG_HALO)
    return svg_legend(svg, bottom + 64, [("box", color, None, words) for color, _, words in SVG_ZC.values()]
                      + [("line", *SVG_BASELINE, "the MSG_ZEROCOPY baseline's rate")])


def svg_sizes(svg: Svg, top: float, results: List[Result]) -> float:
    """--sizes: MB/s, then CPU s/GB, against the payload size; a line per row label, the crossovers marked."""
    series = svg_series(results, svg_name)
    for n, (panel, title) in enumerate((("mb", "Throughput"), ("cpu", "CPU cost"))):
        x, y = svg_panel(svg, series, lambda r: r.size, panel, SVG_LEFT, SVG_WIDTH - SVG_RIGHT,
                         top + n * (SVG_PANEL_HEIGHT + SVG_PANEL_GAP), True, f"{title} against payload size",
                         "payload per send, bytes (log scale)", f"{SVG_PANELS[panel][1]} (log scale)")
        for i, (pair, size) in enumerate(crossover(results).items()):
            if n == 0:      # words under the panel: inside, they would cover the points at the large sizes
                where = "at no size measured" if size is None else f"from {size} B (dotted line)"
                beats = CROSSOVER_PAIRS[pair][2].replace(" vs ", " beats ")
                svg.text(x.px0, y.px0 + 54 + 15 * i, f"crossover: {beats} {where}", class_="crossover-label")
            if size is None:
                svg.add("g", class_="crossover", data_pair=pair, data_size="none")
                continue
            svg.add("line", x1=x(size), x2=x(size), y1=y.px1, y2=y.px0, stroke="#555555", stroke_width=1.5,
                    stroke_dasharray="2 3", class_="crossover", data_pair=pair, data_size=size)
            if n == 0:      # low in the rate panel: the large sizes run high there
                svg.text(x(size), y.px0 - 5 - 13 * i, pair, text_anchor="middle", font_size=10,
                         class_="crossover-tag", **SVG_HALO)
    mark = ("line", "#555555", "2 3", "crossover: zero-copy 5% or more faster from here")   # fits its column
    return svg_legend(svg, top + 2 * SVG_PANEL_HEIGHT + SVG_PANEL_GAP + 64, [mark], series)


def svg_sweep(svg: Svg, top: float, results: List[Result]) -> float:
    """--sweep: per size, MB/s and the user share against the batch; a line per mode, its knee marked."""
    half = (SVG_WIDTH - SVG_LEFT - SVG_RIGHT) / 2
    xlabel = "batch: requests per io_uring_enter (log scale)"
    for size in dict.fromkeys(r.size for r in results):
        series = svg_series([r for r in results if r.size == size], lambda r: MODE_LABELS[r.mode])
        x, y = svg_panel(svg, series, lambda r: r.batch, "mb", SVG_LEFT, SVG_LEFT + half - 40, top, False,
                         f"{size} B per send: throughput", xlabel, "MB/s")
        svg_panel(svg, series, lambda r: r.batch, "user", SVG_LEFT + half + 40, SVG_WIDTH - SVG_RIGHT, top,
                  False, f"{size} B per send: user share of the CPU", xlabel, "user % (Python, ctypes)")
        for name, mine, color, _ in series:
            # Judged on the JSON row's MB/s, as drawn, so that a reader of the JSON finds the same knee.
            low = knee(mine, lambda r: svg_value(r, "mb_per_s"))[0]
            cx, cy = x(low.batch), y(svg_value(low, "mb_per_s"))
            svg.add("circle", cx=cx, cy=cy, r=10.0, fill="none", stroke=color, stroke_width=1.5,
                    class_="knee", data_mode=low.mode, data_size=size, data_batch=low.batch,
                    title=f"knee, {name}: batch {low.batch}")
            right_half = cx > (x.px0 + x.px1) / 2
            svg.text(cx + (-12 if right_half else 12), cy + 24, f"knee: batch {low.batch}", fill=color,
                     text_anchor="end" if right_half else "start", class_="knee-label", **SVG_HALO)
        top += SVG_PANEL_HEIGHT + SVG_PANEL_GAP
    series = svg_series(results, lambda r: MODE_LABELS[r.mode])
    mark = ("line", "#555555", None, f"ring: the knee, the smallest batch within {1 - KNEE_MARGIN:.0%} "
                                     f"of the mode's best")
    return svg_legend(svg, top - 16, [mark], series)


def bench_svg(cfg: BenchConfig, header: List[str], results: List[Result]) -> str:
    """The whole chart: a title, the table's header lines, the panels of this form, a legend."""
    title = ("sendzc bench --sweep: io_uring SEND_ZC against the batch size, with and without SQPOLL"
             if cfg.sweep else "sendzc bench: every way to send, against the payload size"
             if len(cfg.sizes) > 1 else f"sendzc bench: every way to send, {cfg.sizes[0]} B per send")
    svg = Svg()
    svg.text(16, 28, title, font_size=17, font_weight="bold", class_="title")
    y = 50.0
    for line in header + [f"host {socket.gethostname()}; {SVG_UNITS}"]:
        svg.text(16, y, line, font_size=11, fill="#444444", class_="header")
        y += 15
    if STOP.requested or any(r.interrupted or r.error for r in results):
        svg.text(16, y, "partial: the run stopped early (Ctrl-C or a failed row); these are the rows "
                        "measured until then", fill="#c00000", class_="partial")
        y += 15
    if not results:
        svg.text(16, y + 36, "no row was measured", class_="empty")
        return svg.document(y + 72, title)
    draw = svg_sweep if cfg.sweep else svg_sizes if len(cfg.sizes) > 1 else svg_bars
    return svg.document(draw(svg, y + 36, results) + 16, title)


def svg_file(text: str) -> str:
    """--svg FILE: a path in a directory that exists, checked before a run that may take minutes."""
    if not text:
        raise argparse.ArgumentTypeError("no file name: give a FILE to write the chart to, such as chart.svg")
    where = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(where):
        raise argparse.ArgumentTypeError(f"no directory {where} to write it in: give a FILE in "
                                         f"a directory that exists")
    return text


def print_bench(cfg: BenchConfig, results: List[Result], complete: bool) -> None:
    """The tables, one per size, headed by how the path carries it; then what the columns mean."""
    for size, gso in cfg.groups:
        rows = [r for r in results if r.size == size and (r.gso or 0) == gso]
        if not rows and not cfg.lacking:
            continue
        n = ip_fragments(size, cfg.path_mtu, cfg.family) if cfg.path_mtu and cfg.proto == "udp" else 1
        how = (f", UDP GSO: {gso}-byte segments, {segments_per_send(size, gso)} datagrams per send" if gso
               else f", fragmented: {n} IP fragments each at MTU {cfg.path_mtu}" if n > 1 and not cfg.sweep
               else "")
        table = (format_sweep if cfg.sweep else format_table)(rows) if rows else []
        print(f"\n{size} B per send{how}", *table, sep="\n")
        for mode, batch in cfg.plan():
            if mode in cfg.lacking:
                print(f"{MODE_LABELS[mode]:<29} {batch:>5}  not run: needs {cfg.lacking[mode]}")
    receiver = bench_receiver(results)
    if receiver:
        print("", *receiver, sep="\n")
    if cfg.sweep:
        print("\nuser %: the share of the row's CPU spent outside the kernel (Python, ctypes): "
              "what batching amortizes. With SQPOLL, sys includes the kernel's SQ thread on the "
              "other CPU.", flush=True)
    else:
        print("\n".join(bench_footer(results, cfg.sizes, complete)), flush=True)


def bench_receiver(results: List[Result]) -> List[str]:
    """-D: what the receiver got of each row (as a single run's "receiver:" line), or why none said."""
    counted = [r for r in results if r.receiver is not None]
    if not counted:
        note = next((r.receiver_note for r in results if r.receiver_note), None)
        return [f"note: {note}"] if note else []
    lines = [f"receiver at {counted[0].receiver['at']}, row by row:"]
    for r in results:
        got = receiver_got(r) if r.receiver is not None else r.receiver_note or "not counted"
        lines.append(f"  {row_label(r.mode, r.batch, r.size, r.gso or 0)}: {got}")
    return lines


def bench_main(argv: List[str]) -> int:
    """`sendzc.py [bench] [options] [udp|tcp]`."""
    a = bench_parser().parse_args(argv)
    cfg = bench_config(a)
    with ExitStack() as stack:
        sink = stack.enter_context(private_sink(cfg.qdisc, cfg.mtu)) if cfg.addr is None else None
        dst = cfg.addr or (SINK_DST6 if cfg.family == socket.AF_INET6 else SINK_DST4)
        cfg.path_mtu = probe_path_mtu(cfg.family, dst, cfg.port) if cfg.proto == "udp" else None
        cfg.groups = bench_groups(cfg)
        if not cfg.as_json:
            print("\n".join(bench_header(cfg, dst, sink)), flush=True)
        results, failure = run_bench(cfg, dst)
    # Back home, nothing holds the private namespace any more: report. A crossover is a claim about
    # every size: over a run that Ctrl-C or an error ended early, it would judge sizes never measured.
    complete = failure is None and not STOP.requested
    if cfg.as_json:
        params = {"proto": cfg.proto, "family": family_name(cfg.family), "addr": dst, "port": cfg.port,
                  "sizes": cfg.sizes, "batches": cfg.batches, "seconds": cfg.seconds,
                  "interval": cfg.interval, "entries": BENCH_ENTRIES, "sweep": cfg.sweep,
                  "mtu": cfg.path_mtu, "gso": max(gso for _, gso in cfg.groups) or None,
                  "sink": None if sink is None else {**vars(sink), "netns": "private"}}
    # The chart first (also after Ctrl-C or a failed row: the rows so far), so that the
    # JSON document's error can be its failure too.
    unwritten = write_svg(a.svg, bench_svg(cfg, bench_header(cfg, dst, sink), results)) if a.svg else None
    if cfg.as_json:
        extra = {"crossover": crossover(results) if complete else None} if len(cfg.sizes) > 1 else {}
        if cfg.lacking:         # the rows this kernel cannot run, and what each needs
            extra["not_run"] = [{"mode": m, "batch": b, "needs": cfg.lacking[m]}
                                for m, b in cfg.plan() if m in cfg.lacking]
        print(json.dumps(json_doc(params, results, {**extra, "error": failure or unwritten}), indent=2))
    else:
        print_bench(cfg, results, complete)
    if failure or unwritten:
        raise Fatal(failure or unwritten)
    return 130 if STOP.requested else 0


def write_svg(path: str, chart: str) -> Optional[str]:
    """Write the chart whole or not at all: to a temporary name beside path, renamed on success
    (rename(2) is atomic). None, or the line that says why it could not be written."""
    where, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(where, f".{name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(chart)
        os.replace(temporary, path)
    except OSError as e:        # a read-only place, a full disk: one line, exit 1
        try:
            os.unlink(temporary)
        except OSError:
            pass                # never made (EACCES), or gone already
        fix = ("free some space there, or give a FILE elsewhere" if e.errno in (errno.ENOSPC, errno.EDQUOT)
               else "give a FILE you may write, or drop --svg")
        return (f"--svg {path}: cannot write the chart ({errno.errorcode.get(e.errno, e.errno)}: "
                f"{e.strerror}): {fix}")
    return None


def int_list(text: str) -> List[int]:
    """--sizes 1400,4096: positive whole numbers, comma-separated; sorted, once each."""
    values = []
    for part in text.split(","):
        try:
            values.append(positive_int(part.strip()))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a whole number of 1 or more: "
                                             f"give such numbers, separated by commas") from None
    return sorted(set(values))


def bench_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sendzc.py bench", protocols=("udp", "tcp"),
               formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Every way to send, one table: send(2), MSG_ZEROCOPY, io_uring SEND, "
                           "SEND_ZC and SEND_ZC with a registered buffer, on a private sink "
                           "(root) or to a receiver (-D).",
               epilog="`sudo python3 sendzc.py` with no arguments runs this with its defaults.")
    add_common(p)
    p.add_argument("-D", dest="addr", metavar="ADDR", help="send to a receiver at ADDR (running "
                   "`sendzc.py rx`) instead of the private sink; needs no root")
    p.add_argument("-t", dest="seconds", type=positive_float,
                   help=f"seconds per row (default {BENCH_SECONDS:g})")
    p.add_argument("-s", "--sizes", type=int_list, metavar="SIZES",
                   help=f"payload sizes, comma-separated, one table each, and where zero-copy starts "
                        f"to pay (default {','.join(map(str, BENCH_SIZES))})")
    p.add_argument("--batches", type=int_list, metavar="NR_REQS",
                   help=f"io_uring requests per io_uring_enter, comma-separated (default "
                        f"{','.join(map(str, BENCH_BATCHES))}, the RFC's)")
    p.add_argument("--sweep", action="store_true",
                   help=f"instead of the table, the io_uring SEND_ZC path (registered buffer, with "
                        f"and without SQPOLL) at every batch size: rate and user/sys CPU, and where "
                        f"batching stops paying (defaults: -t {SWEEP_SECONDS:g}, --sizes "
                        f"{','.join(map(str, SWEEP_SIZES))}, --batches {','.join(map(str, SWEEP_BATCHES))})")
    p.add_argument("--qdisc", metavar="QDISC",
                   help=f"the sink's root qdisc (default {DEFAULT_QDISC}, as on a dummy device; "
                        f"'{KEEP_QDISC}' keeps the kernel's choice, net.core.default_qdisc)")
    p.add_argument("--mtu", type=mtu_value,
                   help=f"the private sink's MTU (default {SINK_MTU}); below a size, that size is "
                        f"measured again with UDP GSO, and without --sizes the largest unfragmented "
                        f"datagram gets a table too")
    p.add_argument("proto", nargs="?", type=protocol(*p.protocols), default="udp", metavar="{udp,tcp}",
                   help="what to send (default udp; tcp needs -D)")
    p.add_argument("--svg", metavar="FILE", type=svg_file, help="also draw the results into FILE, an SVG "
                   "chart a browser opens: bars for one size, lines against --sizes or the --sweep's batches")
    return p


def bench_config(a: argparse.Namespace) -> BenchConfig:
    """Check bench's options against each other; UsageError names the mistake."""
    family = pick_family(a.families, a.addr)
    sizes = a.sizes or list(SWEEP_SIZES if a.sweep else BENCH_SIZES)
    batches = a.batches or list(SWEEP_BATCHES if a.sweep else BENCH_BATCHES)
    if a.addr is None and a.proto == "tcp":
        raise UsageError(TCP_NEEDS_A_PEER)
    if a.addr is not None and a.qdisc is not None:
        raise UsageError("--qdisc with -D: --qdisc sets up the private sink, and -D sends over "
                         "this host's own path and its qdisc: drop one of the two")
    check_sink_mtu(a.mtu, a.addr, family)
    limit = max_payload(a.proto, family)
    too_big = [s for s in sizes if s > limit]
    if too_big:
        raise UsageError(f"--sizes {too_big[0]}: payload exceeds max ({limit}) for {a.proto} over "
                         f"{family_name_label(family_name(family))}: keep every size at {limit} or less")
    if batches[-1] > BENCH_ENTRIES:
        raise UsageError(f"--batches {batches[-1]}: more requests per batch than the ring has "
                         f"entries ({BENCH_ENTRIES}): keep every batch at {BENCH_ENTRIES} or less")
    return BenchConfig(proto=a.proto, family=family, addr=a.addr, port=a.port, sizes=sizes, batches=batches,
                       seconds=a.seconds or (SWEEP_SECONDS if a.sweep else BENCH_SECONDS),
                       interval=a.interval, as_json=a.json, qdisc=a.qdisc or DEFAULT_QDISC, sweep=a.sweep,
                       mtu=a.mtu or SINK_MTU, sizes_given=a.sizes is not None)


TCP_NEEDS_A_PEER = ("tcp needs a peer that acknowledges, and the private sink drops everything: "
                    "pass -D ADDR of a host running `sendzc.py rx tcp`")


def check_sink_mtu(mtu: Optional[int], addr: Optional[str], family: int) -> None:
    """--mtu belongs to the private sink: not with -D, and not below IPv6's minimum with -6."""
    if mtu is not None and addr is not None:
        raise UsageError("--mtu with -D: --mtu sets the private sink's MTU, and -D sends over this "
                         "host's own path, whose MTU is its route's: drop one of the two")
    if mtu is not None and family == socket.AF_INET6 and mtu < IPV6_MIN_MTU:
        raise UsageError(f"--mtu {mtu} with -6: IPv6 needs an MTU of {IPV6_MIN_MTU} or more: "
                         f"give --mtu {IPV6_MIN_MTU} or more, or send IPv4")


# =============================================================================
# 11. Failures
#
# Every refusal and fault ends in one line, `sendzc: <cause>: <fix>`, and an
# exit status: 2 for a usage mistake, 1 for a refusal or a fault, 130 (or
# 128+N) for a signal. README's "When it fails" lists every line, and the
# tests read that table. The lines that depend on what the system answered
# are made here, from the errno and from what this process may do (its
# capabilities, its seccomp mode, its locked-memory limit,
# kernel.io_uring_disabled); a check of the options alone raises its line
# where it checks (the parsers, section 12).
# =============================================================================

def oserror_line(e: OSError) -> str:
    """One line for an OSError that reached main(): the call that failed, its errno, a fix.

    The call is the syscall's own name when section 2 raised it; otherwise
    the first call on the line of this file it passed through last (as
    `mmap.mmap() in Payload.__init__`), read back from the traceback.
    """
    call = getattr(e, "syscall", None)
    if call is None:
        last, tb = None, e.__traceback__
        while tb is not None:
            if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(__file__):
                last = tb
            tb = tb.tb_next
        if last is None:
            call = "a call"
        else:
            code = last.tb_frame.f_code
            where = getattr(code, "co_qualname", None)                  # 3.11+
            if where is None:                                            # 3.9, 3.10: ask self
                owner = last.tb_frame.f_locals.get("self")
                where = code.co_name if owner is None else f"{type(owner).__name__}.{code.co_name}"
            # (Out of file descriptors, linecache cannot open the file: "".)
            called = re.search(r"([A-Za-z_][\w.]*)\(", linecache.getline(code.co_filename,
                                                                        last.tb_lineno))
            call = f"{called.group(1)}() in {where}" if called else f"a call in {where}()"
    if e.errno is None:
        return f"{call} failed: {e}: unexpected here; please report it, with the command line"
    blocked = seccomp_refusal(e)           # io_uring_enter or _register, refused on their own
    if blocked:
        return blocked
    name = errno.errorcode.get(e.errno, str(e.errno))
    fix = OSERROR_FIXES.get(e.errno, "unexpected here; please report it, with the command line")
    fix = fix.format(nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return f"{call} failed: {name} ({os.strerror(e.errno)}): {fix}"


def setup_error(e: OSError) -> str:
    """One line for a refused io_uring_setup() (or a failed mmap of its rings)."""
    if getattr(e, "syscall", None) != "io_uring_setup":
        return oserror_line(e)             # the rings' mmap(), say: EMFILE (mmap dup()s the fd)
    refused = e.errno in (errno.EPERM, errno.EACCES)
    disabled = read_io_uring_disabled() if refused else None
    if disabled == 2:
        return ("io_uring is disabled on this host (kernel.io_uring_disabled=2): "
                "`sysctl -w kernel.io_uring_disabled=0` as root")
    if disabled == 1:
        return ("io_uring is limited to root and the io_uring_group (kernel.io_uring_disabled=1): "
                "run as root, join the group kernel.io_uring_group names, or "
                "`sysctl -w kernel.io_uring_disabled=0` as root")
    blocked = seccomp_refusal(e)
    if blocked:
        return blocked
    if refused:
        return (f"io_uring_setup: {errno.errorcode[e.errno]}, though io_uring is enabled and no "
                f"seccomp filter is on: a security module (SELinux, AppArmor) may deny it: "
                f"look in its audit log")
    if e.errno == errno.ENOSYS:
        return ("io_uring_setup: ENOSYS: this kernel has no io_uring (built without "
                "CONFIG_IO_URING): use one that has it")
    if e.errno == errno.ENOMEM and not has_cap(CAP_IPC_LOCK):
        # Ring memory counts against RLIMIT_MEMLOCK before 5.12 and again since
        # 6.14 (io_create_region()): a user without CAP_IPC_LOCK meets it first.
        return (f"io_uring_setup: ENOMEM: the rings need more locked memory than RLIMIT_MEMLOCK "
                f"leaves (`ulimit -l`: {memlock_limit()}): raise it, lower --entries, or run as root")
    return oserror_line(e)


def seccomp_refusal(e: OSError) -> Optional[str]:
    """One line for an io_uring syscall a seccomp filter refused (EPERM, EACCES) or hid (ENOSYS).

    None if no filter is on or the errno is not a filter's. A profile may refuse
    only io_uring_enter or _register (setup works): the line names the call.
    """
    call = getattr(e, "syscall", None)
    if (call not in ("io_uring_setup", "io_uring_enter", "io_uring_register")
            or e.errno not in (errno.EPERM, errno.EACCES, errno.ENOSYS)
            or proc_status("Seccomp") != str(SECCOMP_MODE_FILTER)):
        return None
    return (f"{call}: {errno.errorcode[e.errno]}: a seccomp filter on this process "
            f"{'hides' if e.errno == errno.ENOSYS else 'refuses'} io_uring (as the default profiles "
            f"of container runtimes do): allow io_uring_setup, io_uring_enter and io_uring_register "
            f"in its profile, or run outside the container")


def check_io_uring() -> None:
    """Set up a ring of one entry, register with it, enter it with a NOP: raise the first refusal.

    For the receiver, which can do without io_uring: a seccomp profile may allow
    io_uring_setup and refuse only _register or _enter, and only calling each tells.
    """
    with Ring(1, attempts=SETUP_ATTEMPTS) as ring:
        get_probe(ring)                                   # io_uring_register
        sqe = io_uring_sqe()
        prep_nop(sqe)
        ring.place(bytes(sqe))
        ring.submit_and_wait(1)                        # io_uring_enter
        ring.cq_advance(ring.cq_ready())


def register_error(e: OSError, nbytes: int) -> str:
    """One line for a refused io_uring_register() of the payload buffer (nbytes long)."""
    if e.errno == errno.ENOMEM and not has_cap(CAP_IPC_LOCK):
        return (f"io_uring_register: ENOMEM: pinning the {nbytes >> 10} KiB payload buffer passes "
                f"the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`: {memlock_limit()}, which "
                f"the ring counts against too): raise it, or run as root")
    return oserror_line(e)


def connect_error(e: OSError, proto: str, addr: str, port: int) -> str:
    """One line for a failed connect(), naming the cause and what to do."""
    where = host_port(addr, port)
    if e.errno == errno.ECONNREFUSED:
        return (f"{proto}: connection refused by {where}: start the receiver there "
                f"(`python3 sendzc.py rx -p {port} {proto}`)")
    if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return f"{proto}: no route to {addr} ({errno.errorcode[e.errno]}): check the address and `ip route get {addr}`"
    if e.errno == errno.ETIMEDOUT:
        return (f"{proto}: connecting to {where} timed out (no answer in {CONNECT_SECONDS:g} s): "
                f"is the host up, and its firewall letting the port through?")
    return f"{proto}: connect to {where} failed: {errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"


def send_error(err: int, cfg: SendConfig) -> str:
    """One line for an error a send's CQE carried (res = -err), naming the cause and the fix."""
    where = host_port(cfg.addr, cfg.port)
    if cfg.proto == "tcp" and err in (errno.EIO, errno.ECONNRESET, errno.EPIPE):
        # Whichever the kernel reports first; EIO is our mark for a
        # MSG_WAITALL send cut short, which happens only when the connection fails.
        return (f"tcp: the connection to {where} was closed or reset mid-run (the receiver quit?): "
                f"the result above is partial; start the receiver again "
                f"(`python3 sendzc.py rx -p {cfg.port} tcp`) and rerun")
    if err == errno.ECONNREFUSED:
        return (f"{cfg.proto}: {where} refused the data (ECONNREFUSED, an ICMP port unreachable): "
                f"start the receiver there (`python3 sendzc.py rx -p {cfg.port} {cfg.proto}`)")
    if err == errno.ENOBUFS:
        return "send: ENOBUFS: the kernel ran out of socket buffer memory: lower -r or -s"
    if err == errno.ENOMEM and cfg.zc and not cfg.fixed_buf and not has_cap(CAP_IPC_LOCK):
        return (f"send: ENOMEM: zero-copy pins the pages it sends, and those in flight pass the "
                f"locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`: {memlock_limit()}): raise it, "
                f"run as root, or add --no-zc")
    if err == errno.EMSGSIZE:
        return f"send: EMSGSIZE: {cfg.size} bytes do not fit one {cfg.proto} packet on this path: lower -s"
    if err == errno.EOPNOTSUPP and cfg.zc and cfg.proto == "raw":
        return ("raw: Linux sends zero-copy only from TCP and UDP sockets (SEND_ZC on a raw socket "
                "answers EOPNOTSUPP): add --no-zc to send raw with IORING_OP_SEND")
    if err == errno.EOPNOTSUPP and cfg.zc:
        return f"{cfg.proto}: this socket does not support zero-copy send (EOPNOTSUPP): use --no-zc"
    if err == errno.EINVAL and cfg.sendmsg and cfg.fixed_buf:
        return "SENDMSG_ZC with a registered buffer needs Linux 6.15+: add --no-fixed-buf"
    if err == errno.EIO and cfg.gso:
        return gso_eio_error()
    if err == errno.EINVAL and cfg.gso:
        n = segments_per_send(cfg.size, cfg.gso)
        old = UDP_MAX_SEGMENTS_BEFORE_6_9
        return (f"udp: --gso {cfg.gso}: the kernel refused the send (EINVAL): {n} segments per send "
                f"is more than kernels before 6.9 take (UDP_MAX_SEGMENTS was {old}), or the path's "
                f"MTU fell below the segment: give --gso {-(-cfg.size // old)} or more, or -s "
                f"{old * cfg.gso} or less, or --gso auto")
    name = errno.errorcode.get(err, str(err))
    return f"send: {name} ({os.strerror(err)}): unexpected here; please report it, with the command line"


def run_error(cfg: SendConfig, result: Result, err: int, entered: Optional[OSError],
              waited: float, gave_up: bool, held_back: bool = False) -> Optional[str]:
    """The one line a finished run (fast or reference sender) ends with, or None.

    err: the first send's errno; entered: a failed io_uring_enter; waited: the
    drain's wait; gave_up: Ctrl-C twice, so missing completions are no error;
    held_back: the kernel held CQEs back for want of CQ room (Ring.cq_held_back).
    Failed sends are data that never left, whatever else the run says; one with
    no errno of its own (only -ECANCELED links) was the stream breaking.
    """
    if held_back:
        return CQ_HELD_BACK_LINE
    if result.failed and not err:
        err = errno.EIO if cfg.proto == "tcp" else errno.ECANCELED
    if err:
        return send_error(err, cfg)
    if entered is not None:
        return oserror_line(entered)
    if result.undrained and not gave_up:
        return undrained_error(cfg, waited)
    if not result.requests and not result.interrupted:
        return nothing_sent_error(cfg)
    return None


# The CQ ring is sized (CQ_ENTRIES_PER_SQ) and filled so that this cannot happen: a bug if it does.
CQ_HELD_BACK_LINE = ("io_uring: the kernel held CQEs back for want of room in the CQ ring "
                     "(IORING_SQ_CQ_OVERFLOW in sq.flags), so the run ended there: sendzc sizes its "
                     "ring so that this never happens; please report it, with the command line")


def undrained_error(cfg: SendConfig, waited: float) -> str:
    """One line for completions still missing waited seconds (DRAIN_SECONDS, or less) after the run."""
    return (f"{cfg.proto}: {host_port(cfg.addr, cfg.port)} stopped taking data: completions were "
            f"still missing {round(waited, 1):g} s after the run: check that the receiver is running "
            f"and reading; the result above is partial")


def nothing_sent_error(cfg: SendConfig) -> str:
    """One line for a run in which no send completed, and nothing failed either."""
    return (f"{cfg.proto}: nothing was sent: no send completed within -t {cfg.seconds:g} s; "
            f"give a longer -t")


NO_UDP_GSO_LINE = ("--gso: this kernel has no UDP GSO (setsockopt(UDP_SEGMENT) answers ENOPROTOOPT; "
                   "it came in Linux 4.18): drop --gso, or use a newer kernel")


def gso_eio_error() -> str:
    """One line for EIO from a UDP GSO send."""
    # udp_send_skb() refuses a GSO send with EIO when the device will not
    # checksum it (ip_summed != CHECKSUM_PARTIAL) or the route goes through
    # IPsec (xfrm); `ethtool -k` shows the device's offloads. (6.18 sent GSO
    # from an ifb with tx checksumming and scatter-gather off all the same.)
    return ("udp: --gso: the kernel refused the send (EIO): the device this path leaves by does not "
            "checksum packets itself (no tx checksum offload or scatter-gather, see `ethtool -k DEV`), "
            "or the path goes through IPsec: turn them on (`ethtool -K DEV tx on sg on`), "
            "or drop --gso and keep -s to the path's largest datagram")


def zerocopy_enobufs_error() -> str:
    """One line for send(MSG_ZEROCOPY) refused with ENOBUFS while no completion is outstanding.

    Completions are charged to option memory (net.core.optmem_max, per
    namespace since 6.9) and, without CAP_IPC_LOCK, pages to RLIMIT_MEMLOCK.
    """
    value = read_sysctl("net/core/optmem_max")
    # Absent in a namespace before 6.9 (Debian's 6.1 showed it): there the host's one value counts.
    cause = (f"net.core.optmem_max = {value}" if value is not None else
             "net.core.optmem_max (the host's: before 6.9 a network namespace has none of its own)")
    fix = "raise it (e.g. `sysctl -w net.core.optmem_max=131072`)"
    if not has_cap(CAP_IPC_LOCK):
        cause += f" or the locked-memory limit (`ulimit -l`: {memlock_limit()})"
        fix = "raise them, or run as root"
    return (f"send(MSG_ZEROCOPY): ENOBUFS with no completion outstanding: {cause} cannot hold one "
            f"send's completion: {fix}")


def bind_error(e: OSError, cfg: RxConfig) -> str:
    """One line for a refused socket() or bind()."""
    if e.errno == errno.EADDRINUSE:
        return (f"rx: {cfg.proto} port {cfg.port} is in use (EADDRINUSE): is another receiver "
                f"running? Pick another port with -p, on both ends")
    if e.errno == errno.EACCES:
        return (f"rx: port {cfg.port} is privileged (EACCES): run as root, or pick a port of "
                f"1024 or more with -p, on both ends")
    if e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) and cfg.family == socket.AF_INET6:
        return f"rx: IPv6 is not available on this host ({errno.errorcode[e.errno]}): use -4"
    return f"rx: bind to port {cfg.port} failed: {errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"


def fork_error(flows: int, i: int) -> str:
    """-n: fork() answered EAGAIN for flow i: this user (or its cgroup) runs no more processes."""
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    have = "unlimited" if nproc == resource.RLIM_INFINITY else nproc
    return (f"-n {flows}: fork() refused flow {i} (EAGAIN): this user may run no more processes "
            f"(`ulimit -u`: {have}, or the cgroup's pids.max): lower -n, or raise `ulimit -u`")


def nothing_to_verify(r: RxResult) -> str:
    """rx: a sender came, but no byte of it could be compared (Verifier.unverified): not a pass."""
    fix = ("send datagrams that carry data (sendzc.py sends -s 1 or more)" if r.proto == "udp" else
           "see the sender's own line for why it sent nothing, and run it again" if not r.bytes else
           f"send with `sendzc.py --pool N tcp`, whose requests are {STAMP.size} bytes or more")
    return f"rx: nothing to verify: {r.unverified}: {fix}"


def recv_error(e: OSError, nbytes: int) -> str:
    """One line for a receive that failed."""
    if e.errno in (errno.ECONNRESET, errno.EPIPE):
        return (f"rx: the sender reset the connection ({errno.errorcode[e.errno]}) after "
                f"{nbytes} bytes: partial result above")
    return f"rx: receive failed after {nbytes} bytes: {errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"


# Capabilities and limits the lines above look at (CAP_IPC_LOCK: section 8).
SECCOMP_MODE_FILTER = 2      # <linux/seccomp.h>; /proc/self/status "Seccomp:"


def proc_status(field_name: str) -> Optional[str]:
    """A field of /proc/self/status ("Seccomp", "CapEff"), None if absent."""
    try:
        with open("/proc/self/status") as f:
            value = dict(line.partition(":")[::2] for line in f).get(field_name)
    except OSError:
        return None
    return value and value.strip()


def has_cap(cap: int) -> bool:
    """Is capability cap in this process's effective set?"""
    eff = proc_status("CapEff")
    return eff is not None and bool(int(eff, 16) >> cap & 1)


def memlock_limit() -> str:
    """RLIMIT_MEMLOCK's soft limit, as `ulimit -l` would say it."""
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft >> 10} KiB"


def read_sysctl(path: str) -> Optional[int]:
    """An integer sysctl under /proc/sys ("net/core/optmem_max": this namespace's); None if absent."""
    try:
        with open("/proc/sys/" + path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def read_io_uring_disabled() -> Optional[int]:
    """kernel.io_uring_disabled (6.6+): 0 on, 1 root/group only, 2 off; None if absent."""
    return read_sysctl("kernel/io_uring_disabled")


# =============================================================================
# 12. Command line
#
#   sendzc.py [options] udp|tcp|raw     the sender, with the seed's options
#   sendzc.py rx [options] udp|tcp      the receiver
#   sendzc.py bench [options]           the comparison on a private sink
#   sendzc.py                           ... the same, with bench's defaults
#   sendzc.py --probe                   what this kernel offers
#
# Every failure ends in one line on stderr and a non-zero status: 2 for a
# mistake on the command line, 1 for a refusal by the system, 130 for Ctrl-C.
# =============================================================================

class UsageError(Fatal):
    def __init__(self, message: str):
        super().__init__(message, 2)


class Parser(argparse.ArgumentParser):
    """argparse, but every usage mistake is one line, `cause: fix`, and exit status 2.

    With options like -4 and -6, argparse reads "-t -1" as two options and says
    "expected one argument", hiding what is wrong with -1: parse_known_args()
    glues such a value to its option ("-t=-1").
    """

    def __init__(self, *args, protocols: Tuple[str, ...] = (), **kw):
        self.protocols = protocols                 # the words the positional proto accepts
        super().__init__(*args, **kw)

    def _get_value(self, action: argparse.Action, text: str):
        """argparse's one call of a type check (the same since 3.2): its refusal, with option and value."""
        try:
            return super()._get_value(action, text)
        except argparse.ArgumentError as e:
            name = " ".join(action.option_strings[-1:])
            shown = text or "''"                  # --svg "": the empty word, visible
            raise UsageError(f"{name} {shown}: {e.message}" if name else e.message) from None

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        options, glued, words = self._option_string_actions, [], iter(self._argv)
        for word in words:
            if word == "--":                   # everything after it is positional
                glued += [word, *words]
                break
            takes_one = word in options and options[word].nargs is None      # a store: exactly one value
            value = next(words, None) if takes_one else None
            if value is not None and value.startswith("-") and value not in options:
                glued.append(f"{word}={value}")    # -t -1 -> -t=-1: argparse keeps it a value
            else:
                glued += [word] if value is None else [word, value]
        return super().parse_known_args(glued, namespace)

    def error(self, message: str):
        if message.startswith("the following arguments are required:") and self.protocols:
            raise UsageError(f"no protocol given: end the command with {or_list(self.protocols)}, "
                             f"e.g. `{command([*self._argv, self.protocols[0]], self.prog)}`")
        if message.endswith(": expected one argument") and message.startswith("argument "):
            option = message[len("argument "):-len(": expected one argument")].split("/")[-1]
            raise UsageError(f"{option} needs a value: put it right after {option} "
                             f"(see `python3 {self.prog} --help`)")
        raise UsageError(f"{message}: see `python3 {self.prog} --help`")


def or_list(words: Tuple[str, ...]) -> str:
    """'udp, tcp or raw'."""
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]


def command(argv: List[str], prog: str = "sendzc.py") -> str:
    return " ".join(["python3", prog, *map(shlex.quote, argv)])


def protocol(*names: str) -> Callable[[str], str]:
    """The positional proto's check: one of names (argparse's choices=, with a fix)."""
    def proto(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown protocol {text!r}: say {or_list(names)}")
        return text
    return proto


def number(convert: Callable[[str], object], fits: Callable[[object], bool],
           not_a_number: str, out_of_range: str) -> Callable[[str], object]:
    """An argparse type: convert(text), which fits() must accept; each refusal says what to give."""
    def check(text: str):
        try:
            if not text.isascii() or "_" in text:   # int() and float() take ٠-٩, ８, 1_000 too
                raise ValueError(text)
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_number) from None
        if not fits(value):
            raise argparse.ArgumentTypeError(out_of_range)
        return value
    return check


def whole(text: str) -> int:
    return int(text, 0)                         # 0x.. and 0o.. too, as the seed's strtoul


def at_least(low: int) -> Callable[[str], int]:
    return number(whole, lambda value: value >= low, f"not a whole number: give one of {low} or more",
                  f"too small: give a whole number of {low} or more")


positive_int = at_least(1)
non_negative_int = at_least(0)
# Seconds: float() also takes 'inf' and 'nan', which are not.
positive_float = number(float, lambda value: 0 < value < float("inf"),
                        "not a number: give seconds above 0, e.g. 0.5",
                        "not a positive number of seconds: give seconds above 0, e.g. 0.5")
# -i: below a millisecond, an interval is mostly the clock's and print()'s own cost.
MIN_INTERVAL_S = 0.001
interval_seconds = number(float, lambda value: MIN_INTERVAL_S <= value < float("inf"),
                          "not a number: give seconds above 0, e.g. 0.5",
                          f"too short an interval: give {MIN_INTERVAL_S:g} seconds or more")
port_number = number(whole, lambda value: 1 <= value <= 65535, "not a port number: give one from 1 to 65535",
                     "no such port: give one from 1 to 65535")


def mtu_value(text: str) -> int:
    """--mtu: a whole number from IPv4's minimum MTU to the largest an ifb device takes."""
    value = at_least(IPV4_MIN_MTU)(text)
    if value > SINK_MTU:
        raise argparse.ArgumentTypeError(f"too large: give an MTU from {IPV4_MIN_MTU} to {SINK_MTU}")
    return value


def gso_size(text: str) -> int:
    """--gso: a segment size in bytes, or auto (GSO_AUTO: the path's largest datagram)."""
    bad = "not a segment size: give bytes per datagram, such as 1472, or auto"
    return GSO_AUTO if text == "auto" else number(whole, lambda value: value >= 1, bad, bad)(text)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-4", dest="families", action="append_const", const=socket.AF_INET, help="IPv4")
    p.add_argument("-6", dest="families", action="append_const", const=socket.AF_INET6, help="IPv6")
    p.add_argument("-p", dest="port", type=port_number, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("-i", dest="interval", type=interval_seconds, metavar="SECS",
                   help="report every SECS seconds during the run, as iperf3 does")


def sender_parser() -> Parser:
    p = Parser(prog="sendzc.py", protocols=("udp", "tcp", "raw"),
               formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Send with io_uring zero-copy (IORING_OP_SEND_ZC) and report what "
                           "the kernel did.",
               epilog="other forms:\n"
                      "  sendzc.py bench [options]     the whole comparison on a private sink "
                      "(root; see `sendzc.py bench --help`);\n"
                      "                                `sendzc.py` alone runs it with its defaults\n"
                      "  sendzc.py rx [options] udp|tcp  receive and verify "
                      "(see `sendzc.py rx --help`)\n"
                      "  sendzc.py --probe             what this kernel's io_uring offers\n"
                      "  sendzc.py --first-send        one SEND_ZC, its result and notification "
                      "explained, then the\n"
                      "                                same in bulk (Part I's section 7; the private "
                      "sink as root,\n"
                      "                                else loopback; see `sendzc.py --first-send --help`)")
    add_common(p)
    p.add_argument("-D", dest="addr", metavar="ADDR", help="destination address")
    p.add_argument("-s", dest="size", type=positive_int, default=SEED_MAX_PAYLOAD,
                   help=f"payload bytes per send (default {SEED_MAX_PAYLOAD}, the seed's maximum)")
    p.add_argument("-t", dest="seconds", type=positive_float, default=4.0, help="seconds to send (default 4)")
    p.add_argument("-r", dest="batch", type=positive_int, default=8, metavar="NR_REQS",
                   help="requests per io_uring_enter (default 8)")
    p.add_argument("-f", dest="flush", action="store_true",
                   help="wait for each batch's notifications before the next")
    p.add_argument("--no-zc", dest="zc", action="store_false",
                   help="IORING_OP_SEND, which copies, instead of SEND_ZC")
    p.add_argument("--no-fixed-buf", dest="fixed_buf", action="store_false",
                   help="do not use a registered buffer")
    p.add_argument("--sendmsg", action="store_true", help="IORING_OP_SENDMSG_ZC instead of SEND_ZC")
    p.add_argument("--entries", type=positive_int, default=512,
                   help=f"SQ ring entries, a power of two up to {MAX_ENTRIES} (default 512)")
    p.add_argument("--trace", type=non_negative_int, default=0, metavar="N",
                   help="print the SQEs and CQEs of the first N requests")
    p.add_argument("-n", dest="flows", type=positive_int, default=1, metavar="FLOWS",
                   help=f"parallel flows, each with its own process, socket and ring (at most "
                        f"{FLOWS_PER_CPU} per CPU, and `ulimit -u`)")
    p.add_argument("--sqpoll", action="store_true",
                   help="let a kernel thread submit (IORING_SETUP_SQPOLL; x86-64)")
    p.add_argument("--gso", type=gso_size, default=0, metavar="SEG|auto",
                   help="udp: UDP GSO, each send leaving as SEG-byte datagrams (UDP_SEGMENT); "
                        "auto: the largest that crosses the path unfragmented")
    p.add_argument("--sink", action="store_true",
                   help="send into bench's private sink (root), as with no -D")
    p.add_argument("--mtu", type=mtu_value, help=f"the private sink's MTU (default {SINK_MTU})")
    p.add_argument("--pool", type=positive_int, default=0, metavar="N",
                   help="send with the reference sender (section 6) from N buffers, each "
                        "rewritten with a new stamp only after its notification; prints the "
                        "notification lag (check with `rx --pool`)")
    p.add_argument("--break-contract", action="store_true",
                   help="with --pool: rewrite each buffer at its send's result, before its "
                        "notification (wrong on purpose: rx --pool catches it)")
    p.add_argument("proto", type=protocol(*p.protocols), metavar="{udp,tcp,raw}", help="what to send")
    return p


def one_family(families: Optional[List[int]]) -> Optional[int]:
    """The family -4 or -6 asked for; None for neither; both is a mistake."""
    if families and len(set(families)) > 1:
        raise UsageError("-4 and -6 together: pass one of them, or neither")
    return families[0] if families else None


def is_address(family: int, addr: str) -> bool:
    try:
        socket.inet_pton(family, addr)
    except OSError:
        return False
    return True


def pick_family(families: Optional[List[int]], addr: Optional[str]) -> int:
    """-4 or -6 or, with neither, the address's own family (IPv4 by default)."""
    family = one_family(families)
    if family is None:
        family = socket.AF_INET6 if addr and ":" in addr else socket.AF_INET
    if addr is None or is_address(family, addr):
        return family
    other = socket.AF_INET6 if family == socket.AF_INET else socket.AF_INET
    if not is_address(other, addr):
        raise UsageError(f"-D {addr}: not an IPv4 or IPv6 address: give one in numbers, "
                         f"such as 192.0.2.1 or 2001:db8::1")
    flag = f"-{4 if family == socket.AF_INET else 6}"
    raise UsageError(f"-D {addr} is an {family_name_label(family_name(other))} address "
                     f"but {flag} was given: drop {flag} (the address says which)")


# What --pool cannot be combined with: the reference sender is SEND_ZC from
# its own buffers over one ring, one CQE at a time, and nothing else.
POOL_EXCLUDES = (("--no-zc", lambda a: not a.zc), ("--sendmsg", lambda a: a.sendmsg),
                 ("-f", lambda a: a.flush), ("--trace", lambda a: a.trace),
                 ("-n", lambda a: a.flows > 1), ("--sqpoll", lambda a: a.sqpoll),
                 ("-i", lambda a: a.interval), ("--gso", lambda a: a.gso))


# -n: how many flows a host runs at once. Each is a process (the sender) or a thread (rx)
# that wants a CPU: past a few dozen per CPU they only share it (iperf3 -P stops at 128).
FLOWS_PER_CPU = 64
RX_FDS_PER_FLOW = 2          # rx -n: a flow's connection and its ring
RX_FDS_SPARE = 32            # rx: the listener, stdio, and what Python opens itself


def check_flows(flows: int, rx: bool) -> None:
    """-n above what this host runs at once is a usage mistake, named with the limit that binds:
    its CPUs; `ulimit -u` (RLIMIT_NPROC, which counts threads too; root passes it); rx's `ulimit -n`."""
    cpus = len(os.sched_getaffinity(0))
    limits = [(FLOWS_PER_CPU * cpus, f"{FLOWS_PER_CPU} per CPU, {cpus} CPU{'s' if cpus != 1 else ''}", "")]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if nproc != resource.RLIM_INFINITY and os.getuid() != 0:
        limits.append((nproc, f"`ulimit -u` {nproc}", ", or raise `ulimit -u`"))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if rx and nofile != resource.RLIM_INFINITY:
        limits.append((max(1, (nofile - RX_FDS_SPARE) // RX_FDS_PER_FLOW),
                       f"`ulimit -n` {nofile}, {RX_FDS_PER_FLOW} per flow", ", or raise `ulimit -n`"))
    limit, why, fix = min(limits)
    if flows > limit:
        raise UsageError(f"-n {flows}: more flows than this host runs at once ({limit}: {why}): "
                         f"give -n {limit} or less{fix}")


def sender_config(a: argparse.Namespace) -> SendConfig:
    """Check the sender's options against each other; UsageError names the mistake."""
    family = pick_family(a.families, a.addr)
    check_flows(a.flows, rx=False)
    if a.sink and a.addr is not None:
        raise UsageError("--sink with -D: --sink sends into the private sink, -D to a receiver: "
                         "drop one of the two")
    if a.addr is None and a.proto == "tcp":
        raise UsageError(TCP_NEEDS_A_PEER)
    check_sink_mtu(a.mtu, a.addr, family)
    if a.gso and a.proto != "udp":
        why = "TCP segments its stream by itself" if a.proto == "tcp" else "a raw socket has no such option"
        raise UsageError(f"--gso with {a.proto}: UDP GSO (UDP_SEGMENT) cuts UDP sends into datagrams; "
                         f"{why}: drop --gso, or send udp")
    limit = max_payload(a.proto, family)
    if a.size > limit:
        raise UsageError(f"-s {a.size}: payload exceeds max ({limit}) for {a.proto} over "
                         f"{family_name_label(family_name(family))}: give -s {limit} or less")
    if a.entries & (a.entries - 1) or a.entries > MAX_ENTRIES:
        raise UsageError(f"--entries {a.entries}: not a power of two up to {MAX_ENTRIES}: "
                         f"give one such as 512 or 1024")
    if a.batch > a.entries:
        raise UsageError(f"-r {a.batch}: more requests per batch than the ring has entries "
                         f"({a.entries}): raise --entries or lower -r")
    if a.flows > 1 and a.interval:
        raise UsageError(f"-i with -n {a.flows}: interval lines are per run; drop one of the two")
    if a.flush and not a.zc:
        raise UsageError("-f with --no-zc: -f waits for zero-copy notifications, and --no-zc "
                         "sends without them: drop one of the two")
    if a.gso > 0:
        check_segments(a.size, a.gso)
    if a.break_contract and not a.pool:
        raise UsageError("--break-contract without --pool: it breaks the reference sender's rule; "
                         "add --pool N")
    for flag, given in POOL_EXCLUDES if a.pool else ():
        if given(a):
            raise UsageError(f"--pool with {flag}: the reference sender sends SEND_ZC from its own "
                             f"buffers over one ring, one CQE at a time: drop {flag}")
    if a.pool > a.entries:
        raise UsageError(f"--pool {a.pool}: more buffers than the ring has entries ({a.entries}): "
                         f"raise --entries or lower --pool")
    if a.pool and a.size < STAMP.size:
        raise UsageError(f"--pool with -s {a.size}: every {STAMP.size} bytes of a pool request "
                         f"carry its stamp: give -s {STAMP.size} or more")
    if a.pool and a.proto == "raw":
        raise UsageError("--pool with raw: Linux sends zero-copy only from TCP and UDP sockets: "
                         "send udp or tcp")
    return SendConfig(proto=a.proto, family=family, addr=a.addr, port=a.port, size=a.size,
                      batch=a.batch, zc=a.zc, fixed_buf=a.fixed_buf and a.zc, sendmsg=a.sendmsg,
                      flush=a.flush, entries=a.entries, seconds=a.seconds, trace=a.trace,
                      sqpoll=a.sqpoll, flows=a.flows, gso=a.gso, mtu=a.mtu or SINK_MTU,
                      pool=a.pool, break_contract=a.break_contract)


def run_sender(cfg: SendConfig, as_json: bool, interval: Optional[float]) -> int:
    """The seed's main(): one sender (or -n N of them, or --pool's), one result.

    With no -D, into the private sink bench makes; over UDP, the path's MTU first.
    """
    # Before the sink and before connecting: a receiver must see no run that cannot send
    # (Debian's 5.10 connected first, and its rx reported a verified run of 0 bytes). UDP's
    # connect() sends nothing, so only TCP asks a ring of its own: the ring memory of a closed
    # ring comes back a moment later, and a user with little locked memory would miss it.
    check_sqpoll(cfg)
    if cfg.proto == "tcp":
        check_opcode(kernel_opcodes(), cfg.mode)
    plain_buffer_for_sendmsg(cfg)
    with ExitStack() as stack:
        if cfg.addr is None:
            hint = (f"or send to a receiver instead, with no private sink and no root: "
                    f"`python3 sendzc.py -D ADDR {cfg.proto}` (`sendzc.py rx {cfg.proto}` running at ADDR)")
            # Left on the way out, after the report: the namespace (and so
            # every packet we send) goes when this process does, whatever ends it.
            sink = stack.enter_context(private_sink(DEFAULT_QDISC, cfg.mtu, "no -D", hint))
            cfg.addr = SINK_DST6 if cfg.family == socket.AF_INET6 else SINK_DST4
            cfg.sink = {"dev": sink.dev, "mtu": sink.mtu, "qdisc": sink.qdisc, "netns": "private"}
            if not as_json:
                print(f"sink: no -D, so this sends to {cfg.addr} through {sink.dev} in a network "
                      f"namespace of its own (MTU {sink.mtu}, qdisc {sink.qdisc}), where the kernel "
                      f"drops every packet; it goes when sendzc does", flush=True)
        if cfg.proto == "udp":        # settle --gso auto; say before the run if datagrams would fragment
            cfg.path_mtu = probe_path_mtu(cfg.family, cfg.addr, cfg.port)
            if cfg.gso:
                cfg.gso = resolve_gso(cfg.gso, cfg.size, cfg.path_mtu, cfg.family)
            warning = fragmentation_warning(cfg.proto, cfg.size, cfg.zc, cfg.gso, cfg.path_mtu, cfg.family)
            if warning:
                print(f"sendzc: {warning}", file=sys.stderr, flush=True)
        link = open_control(cfg)
        stack.callback(link.close)
        with ExitStack() as data:       # the data's sockets, closed before rx's result is asked for (TCP: EOF)
            flows, result = send_data(cfg, data, as_json, interval)
        finish_control(link, result)
        return report_send(cfg, result, as_json, flows)


def send_data(cfg: SendConfig, stack: ExitStack, as_json: bool,
              interval: Optional[float]) -> Tuple[Optional[List[Result]], Result]:
    """The run itself: -n N flows (their results and total), --pool's reference sender, or the fast one."""
    trace_out = sys.stderr if as_json else sys.stdout     # under --json stdout is one JSON document
    if cfg.flows > 1:
        return run_flows(cfg, trace_out)
    sock = stack.enter_context(tx_socket(cfg))
    if cfg.pool:
        return None, run_reference(cfg, sock, stack)
    payload = Payload(cfg.size, cfg.gso)
    stack.callback(payload.close)           # after the ring (below) has let go of it
    sender = UringSender(cfg, sock, payload, stack)
    sender.trace_out = trace_out
    ticks = Intervals(interval, not as_json) if interval else None

    def on_tick(nbytes: int, requests: int, now_ns: int = 0) -> None:
        # Intervals count from the run's own start, as result.seconds
        # does: the last one, which ends there, cannot end before it began.
        ticks.start_ns = sender.started_ns
        ticks.report(now_ns or time.perf_counter_ns(), nbytes, requests)
    result = sender.run(on_tick=on_tick if ticks else None, tick_ns=int((interval or 0) * 1e9))
    if ticks:                               # the last, partial interval
        on_tick(result.bytes, result.requests, sender.started_ns + int(result.seconds * 1e9))
        result.intervals = ticks.rows
    return None, result


def plain_buffer_for_sendmsg(cfg: SendConfig) -> None:
    """--sendmsg from a plain buffer where this kernel refuses a registered one, said in one line.

    SENDMSG_ZC takes its iovecs from a registered buffer only since 6.15; 6.1 to 6.14 (Debian
    12's 6.1 showed it) answer EINVAL. SENDMSG_ZC itself is there since 6.1, so the run goes
    on as --no-fixed-buf would: the kernel pins the pages at each send instead.
    """
    if not (cfg.sendmsg and cfg.zc and cfg.fixed_buf):
        return
    asked = probe_send("6.15", "SENDMSG_ZC from a registered buffer", sendmsg_zc_fixed)
    if not asked["supported"] and asked["answer"].startswith("EINVAL"):
        cfg.fixed_buf = False
        print(f"sendzc: note: --sendmsg sends from a plain buffer (as --no-fixed-buf): this kernel "
              f"({platform.release()}) refuses SENDMSG_ZC from a registered buffer ({asked['answer']}; "
              f"Linux 6.15+)", file=sys.stderr, flush=True)


def report_send(cfg: SendConfig, result: Result, as_json: bool, flows: Optional[List[Result]] = None) -> int:
    """Print a sender's result (after each flow's, when result is their total), then the receiver's
    (describe_receiver), then its error or the receiver's failure; the status."""
    if flows:                               # rows[0].receiver: the receiver's whole result
        flows[0].receiver, flows[0].receiver_note = result.receiver, result.receiver_note
    failure = result.error or receiver_failure(result)
    if as_json:
        extra = {"total": result.row()} if flows else {}
        print(json.dumps(json_doc(sender_params(cfg), flows or [result],
                                  {**extra, "error": failure} if failure else extra), indent=2))
    else:
        for i, r in enumerate(flows or []):
            print(f"flow {i}: " + describe_result(r)[1])
        if flows:
            print(f"total of {len(flows)} flows:")
        if flows or result.requests or not result.error:   # a run refused at its first send has none
            print("\n".join(describe_result(result) + describe_receiver(result)))
    if failure:
        print(f"sendzc: {failure}", file=sys.stderr)
        return 1
    return 130 if result.interrupted else 0


def sender_params(cfg: SendConfig) -> dict:
    """The sender's params in its --json document."""
    names = ("proto family addr port size batch zc fixed_buf sendmsg flush entries seconds flows "
             "sqpoll gso path_mtu sink pool break_contract").split()
    return dict({name: getattr(cfg, name) for name in names},
                family=family_name(cfg.family), gso=cfg.gso or None)


# --- --probe: what this kernel offers ----------------------------------------
#
# Every answer is the kernel's own, never read from the version number:
# distributions backport features and a kernel's config may leave them out.
# Each setup flag is tried on a ring of its own (EINVAL = unknown), the
# opcodes come from IORING_REGISTER_PROBE, registrations are attempted, and
# each newer send is a real request over UDP on loopback to a socket of ours
# that reads the datagram back: "yes" means the bytes arrived as sent. (A
# kernel that does not know a flag refuses with -EINVAL before sending.)

# The io_uring ABI only --probe asks about (from <linux/io_uring.h>, 6.18):
# the newer sends and zero-copy receive, which the tool reports but never uses.
IORING_SETUP_CQE32 = 1 << 11          # 5.19 32-byte CQEs (zero-copy receive needs them)
IORING_OP_RECV_ZC = 58                # 6.15 zero-copy receive into a registered area
IOSQE_BUFFER_SELECT = 1 << 5          # take the buffer from the provided-buffer group sqe.buf_group
IORING_RECVSEND_BUNDLE = 1 << 4       # 6.10 SEND (not SEND_ZC): every ready provided buffer at once
IORING_SEND_VECTORIZED = 1 << 5       # 6.17 SEND, SEND_ZC: sqe.addr is an iovec array, len its count
IORING_REGISTER_PBUF_RING = 22        # 5.19 a ring of provided buffers (what SEND bundles send from)
IORING_REGISTER_ZCRX_IFQ = 32         # 6.15 a NIC's receive queue, for IORING_OP_RECV_ZC
# The features section 1 left out: --probe reports every one the kernel sets.
IORING_FEAT_SUBMIT_STABLE = 1 << 2
IORING_FEAT_RW_CUR_POS = 1 << 3
IORING_FEAT_CUR_PERSONALITY = 1 << 4
IORING_FEAT_FAST_POLL = 1 << 5
IORING_FEAT_POLL_32BITS = 1 << 6
IORING_FEAT_SQPOLL_NONFIXED = 1 << 7
IORING_FEAT_NATIVE_WORKERS = 1 << 9
IORING_FEAT_RSRC_TAGS = 1 << 10
IORING_FEAT_CQE_SKIP = 1 << 11
IORING_FEAT_LINKED_FILE = 1 << 12
IORING_FEAT_REG_REG_RING = 1 << 13
IORING_FEAT_RECVSEND_BUNDLE = 1 << 14
IORING_FEAT_MIN_TIMEOUT = 1 << 15
IORING_FEAT_RW_ATTR = 1 << 16
IORING_FEAT_NO_IOWAIT = 1 << 17
for _table, _prefix in ((OPCODE_NAMES, "IORING_OP_"), (SETUP_NAMES, "IORING_SETUP_"),
                        (FEAT_NAMES, "IORING_FEAT_"), (SQE_FLAG_NAMES, "IOSQE_"),
                        (SEND_FLAG_NAMES, "IORING_RECVSEND_"), (SEND_FLAG_NAMES, "IORING_SEND_")):
    _table.update(_names(_prefix))      # the names section 1 gave, and these


class io_uring_buf(ctypes.Structure):
    """One provided buffer in a buffer ring; bufs[0].resv is the ring's tail (a u16)."""
    _fields_ = [("addr", u64), ("len", u32), ("bid", u16), ("resv", u16)]


class io_uring_buf_reg(ctypes.Structure):
    """Argument of IORING_REGISTER_PBUF_RING: where the ring is, how long, its group id."""
    _fields_ = [("ring_addr", u64), ("ring_entries", u32), ("bgid", u16), ("flags", u16),
                ("resv", u64 * 3)]


assert (ctypes.sizeof(io_uring_buf), ctypes.sizeof(io_uring_buf_reg)) == (16, 40)

PROBED_SETUP_FLAGS = {"SINGLE_ISSUER": IORING_SETUP_SINGLE_ISSUER,
                      "DEFER_TASKRUN": IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                      "COOP_TASKRUN": IORING_SETUP_COOP_TASKRUN, "NO_SQARRAY": IORING_SETUP_NO_SQARRAY,
                      "CQSIZE": IORING_SETUP_CQSIZE, "SQPOLL": IORING_SETUP_SQPOLL}
PROBED_OPS = (IORING_OP_NOP, IORING_OP_SENDMSG, IORING_OP_SEND, IORING_OP_RECV,
              IORING_OP_SEND_ZC, IORING_OP_SENDMSG_ZC)
PROBE_DATA = b"zc"          # what each probe sends; a vectorized one sends it as two 1-byte iovecs
PROBE_WAIT_S = 1.0          # the longest a probe waits for a CQE or a datagram
GSO_PROBE_SEGMENT, GSO_PROBE_SEGMENTS = 100, 2    # the UDP_SEGMENT probe: one send of 2 x 100 bytes
# What MSG_ZEROCOPY needs of net.core.optmem_max: each send's completion is
# charged to the socket's option memory until it is read off the error queue.
# 131072 is the kernel's default today; the 20480 of older kernels ran out at
# speed (ENOBUFS on every few sends, retried: the bench's note says how many).
MSG_ZEROCOPY_OPTMEM = 131072
PROT_NONE = 0                                             # <sys/mman.h>


NO_SEND_ZC = "IORING_OP_SEND_ZC (Linux 6.0+)"     # --probe's "missing" entry for a kernel before 6.0


def probe_main(argv: List[str]) -> int:
    """`sendzc.py --probe [--json]`: the kernel's answers; exit 1 naming what is missing and fixable.

    A kernel without SEND_ZC is reported, with exit 0: only a newer kernel brings it.
    """
    p = Parser(prog="sendzc.py --probe", description="Ask this kernel what io_uring offers.")
    p.add_argument("--probe", action="store_true", required=True)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    a = p.parse_args(argv)
    caps = kernel_capabilities()
    if a.json:
        JSON_OUT.made = True
        print(json.dumps({"tool": "sendzc", "version": VERSION, "kernel": caps["kernel"],
                          "host": socket.gethostname(), "probe": caps}, indent=2))
    else:
        print("\n".join(describe_capabilities(caps)))
    # No SEND_ZC alone is a report, not a refusal (Debian's 5.10 showed it): the
    # kernel answered every question, and --no-zc and bench still run there.
    if caps["missing"] and caps["missing"] != [NO_SEND_ZC]:
        print(f"sendzc: missing: {', '.join(caps['missing'])}"
              + (f" ({caps['setup_error']})" if "setup_error" in caps else ""), file=sys.stderr)
        return 1
    return 0


def first_send_main(argv: List[str]) -> int:
    """`sendzc.py --first-send`: Part I's first_send(), then bulk_send(); into the private sink
    as root, else over loopback."""
    p = Parser(prog="sendzc.py --first-send",
               description="One SEND_ZC and its two CQEs, explained: Part I's first_send(); "
                           "then the same in bulk, bulk_send(), as root into the private sink, "
                           "else over loopback.")
    p.add_argument("--first-send", action="store_true", required=True)
    p.add_argument("--count", type=positive_int, default=64,
                   help="requests of the bulk send (default 64)")
    p.add_argument("-r", dest="batch", type=first_send_batch, default=8, metavar="NR_REQS",
                   help=f"requests per io_uring_enter in the bulk send (default 8, at most {MAX_ENTRIES})")
    a = p.parse_args(argv)
    with ExitStack() as stack:
        dest = first_send_destination(stack)
        cqes = first_send(dest)
        flags = [f for _, f in cqes]
        if len(cqes) != 2 or not more(flags[0]) or not notif(flags[1]) or cqes[0][0] != 4096:
            raise Fatal(f"the first send did not end in a whole result and its notification: "
                        f"(res, flags) = {cqes}; `sendzc.py --probe` says what this kernel lacks")
        tally, _ = bulk_send(dest, a.count, a.batch, stop=lambda: STOP.requested)
    if STOP.requested:
        return 130
    if tally.error:
        raise Fatal(f"the bulk send failed: {os.strerror(tally.error)} "
                    f"({errno.errorcode.get(tally.error, tally.error)}) in a result CQE")
    if (tally.ok, tally.bytes, tally.notifs, tally.due) != (a.count, a.count * 4096, a.count, 0):
        raise Fatal(f"the bulk send did not end in {a.count} whole results and as many "
                    f"notifications: {tally}; `sendzc.py --probe` says what this kernel lacks")
    return 0


first_send_batch = number(whole, lambda value: 1 <= value <= MAX_ENTRIES,
                          f"not a whole number: give one from 1 to {MAX_ENTRIES}",
                          f"out of range: give a whole number from 1 to {MAX_ENTRIES}")


def first_send_destination(stack: ExitStack) -> Tuple[str, int]:
    """Where --first-send sends: the private sink as root (zero-copy), else a loopback socket (copied)."""
    if os.geteuid() == 0:
        stack.enter_context(private_sink(DEFAULT_QDISC, who="--first-send", hint=FIRST_SEND_HINT))
        print(f"into the private sink ({SINK_DEV} in a namespace of our own, which drops every packet)")
        return SINK_DST4, DEFAULT_PORT
    rx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    rx.bind(("127.0.0.1", 0))            # a receiver that never reads: no ICMP refusal
    print("over loopback (no root, so no private sink): the receiver is on this host, "
          "so the kernel copies, and the notifications say so")
    return rx.getsockname()


FIRST_SEND_HINT = "or run it without root: it sends over loopback instead"


def kernel_capabilities() -> dict:
    """What this kernel's io_uring offers (--probe's JSON object); what is missing, and why."""
    missing: List[str] = []
    caps = {"kernel": platform.release(), "machine": platform.machine(),
            "io_uring_disabled": read_io_uring_disabled(), "missing": missing}
    # First, before any other ring: a closed ring's locked memory is given back
    # by a kernel worker a moment later, and would make the limit look lower.
    limits = zero_copy_limits()
    try:
        ring = Ring(4, attempts=(0,))
    except (OSError, Fatal) as e:
        return dict(caps, missing=["io_uring_setup"],
                    setup_error=setup_error(e) if isinstance(e, OSError) else str(e))
    try:
        with ring, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            caps["features"] = [FEAT_NAMES[bit] for bit in sorted(FEAT_NAMES) if ring.features & bit]
            probe = get_probe(ring)
            caps["opcodes"] = {OPCODE_NAMES[op]: probe.has(op) for op in PROBED_OPS}
            caps["registered_ring_fd"] = ring.register_ring_fd()
            for what, register in (("registered_files", lambda: ring.register_files([sock.fileno()])),
                                   ("registered_buffers",
                                    lambda: ring.register_buffers([(probe_byte_addr(), 1)]))):
                try:
                    register()
                    caps[what] = True
                except OSError as e:
                    caps[what] = f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"
                    missing.append(what.replace("_", " "))
        caps["setup_flags"] = {}
        for name, flag in PROBED_SETUP_FLAGS.items():
            try:
                Ring(4, flags=flag, cq_entries=8 if flag == IORING_SETUP_CQSIZE else 0,
                     attempts=(0,)).close()
                caps["setup_flags"][name] = True
            except OSError as e:
                caps["setup_flags"][name] = e.errno != errno.EINVAL and errno.errorcode.get(e.errno)
        try:
            caps["send_zc_report_usage"] = probe.has(IORING_OP_SEND_ZC) and probe_report_usage()
        except OSError as e:    # its ring refused: ENOMEM, with little locked memory (see "limits")
            if getattr(e, "syscall", None) in ("io_uring_register", "io_uring_enter"):
                raise           # a seccomp filter: below
            caps["send_zc_report_usage"] = f"not asked: {errno.errorcode.get(e.errno, e.errno)}"
        if not probe.has(IORING_OP_SEND_ZC):
            missing.append(NO_SEND_ZC)
        caps["newer"] = newer_features(probe)
    except OSError as e:
        # A ring, but io_uring_register or io_uring_enter refused (a seccomp
        # profile that allows only setup): what we learnt, and that line.
        if getattr(e, "syscall", None) not in ("io_uring_register", "io_uring_enter"):
            raise
        return dict(caps, missing=missing + [e.syscall], setup_error=oserror_line(e))
    caps["limits"] = limits
    if not limits["memlock"]["ok"]:
        missing.append("locked memory for the ring and its registered buffer (RLIMIT_MEMLOCK)")
    return caps


def feature(since: str, supported: bool, answer: str) -> dict:
    """One row of --probe's newer features: the release that brought it, and the kernel's answer."""
    return {"since": since, "supported": supported, "answer": answer}


def errno_words(err: int) -> str:
    return f"{errno.errorcode.get(err, err)} ({os.strerror(err)})"


@contextmanager
def loopback_udp() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """(tx, rx): a UDP socket connected to another, on 127.0.0.1, that reads what tx sends."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(PROBE_WAIT_S)
        tx.connect(rx.getsockname())
        yield tx, rx


def probe_send(since: str, what: str, prep: Callable[[io_uring_sqe, int, int, Ring], object],
               einval: Optional[str] = None) -> dict:
    """Send PROBE_DATA over loopback with the request prep(sqe, fd, address of PROBE_DATA, ring) makes.

    prep returns what the kernel reads besides the data (iovecs, a msghdr).
    einval: the answer for EINVAL, if not "this kernel does not know".
    """
    data = ctypes.create_string_buffer(PROBE_DATA, len(PROBE_DATA))
    try:
        with loopback_udp() as (tx, rx), Ring(4, attempts=SETUP_ATTEMPTS) as ring:
            sqe = io_uring_sqe()
            keep = prep(sqe, tx.fileno(), ctypes.addressof(data), ring)    # held until the CQEs are in
            ring.place(bytes(sqe))
            ring.submit_and_wait(1)
            cqes, flags = ring.peek()
            # A zero-copy send's notification too (PROBE_WAIT_S at most): then data is ours again.
            while flags[0] & IORING_CQE_F_MORE and len(flags) < 2 and ring.wait_cqes(2, PROBE_WAIT_S):
                cqes, flags = ring.peek()
            ring.cq_advance(len(flags))
            del keep                            # every CQE is in: the kernel is done with it
            res, got = cqes[0], b""
            if res >= 0:
                try:
                    got = rx.recv(len(PROBE_DATA) + 1)
                except socket.timeout:
                    pass
    except OSError as e:
        return feature(since, False, f"not asked: {e.strerror or e}")
    if res == -errno.EINVAL:
        return feature(since, False, einval or f"EINVAL: this kernel does not know {what}")
    if res < 0:
        return feature(since, False, f"{what}: {errno_words(-res)}")
    if res != len(PROBE_DATA) or got != PROBE_DATA:
        return feature(since, False, f"{what} sent {res} bytes but {got!r} arrived, not {PROBE_DATA!r}")
    return feature(since, True, f"{res} bytes sent over loopback, received intact")


def sendmsg_zc_fixed(sqe: io_uring_sqe, fd: int, addr: int, ring: Ring) -> msghdr:
    """A SENDMSG_ZC whose one iovec lies in registered buffer 0 (6.15: before, EINVAL)."""
    ring.register_buffers([(addr, len(PROBE_DATA))])
    msg = msghdr(msg_iov=ctypes.pointer(iovec(addr, len(PROBE_DATA))), msg_iovlen=1)   # holds its iovec
    prep_sendmsg_zc_fixed(sqe, fd, ctypes.addressof(msg), 0, 0)
    return msg


def vectorized(zc: bool) -> Callable[[io_uring_sqe, int, int, Ring], ctypes.Array]:
    """A SEND or SEND_ZC with IORING_SEND_VECTORIZED: addr is an iovec array, len its count (6.17)."""
    def prep(sqe: io_uring_sqe, fd: int, addr: int, ring: Ring) -> ctypes.Array:
        iovs = (iovec * 2)(iovec(addr, 1), iovec(addr + 1, 1))    # one datagram from two pieces
        prep_rw(sqe, IORING_OP_SEND_ZC if zc else IORING_OP_SEND, fd, ctypes.addressof(iovs), len(iovs), 0)
        sqe.ioprio = IORING_SEND_VECTORIZED     # liburing has no prep helper for it yet: by hand
        return iovs
    return prep


def probe_send_bundle() -> dict:
    """SEND with IORING_RECVSEND_BUNDLE (6.10): one request sends every ready provided buffer.

    The buffers come from a provided-buffer ring (IORING_REGISTER_PBUF_RING, 5.19; liburing's
    io_uring_setup_buf_ring()): a page of io_uring_buf entries, published by moving its tail as
    io_uring_buf_ring_add() and _advance() do, with a plain store: the kernel reads it only in the
    io_uring_enter that follows. Two 1-byte buffers go out as one datagram.
    """
    def prep(sqe: io_uring_sqe, fd: int, addr: int, ring: Ring) -> None:
        size = ctypes.sizeof(io_uring_buf)
        for bid in range(len(PROBE_DATA)):
            page[bid * size:(bid + 1) * size] = bytes(io_uring_buf(addr + bid, 1, bid))
        struct.pack_into("=H", page, io_uring_buf.resv.offset, len(PROBE_DATA))   # the tail: publish
        reg = io_uring_buf_reg(ring_addr=_addr_of(page), ring_entries=len(PROBE_DATA), bgid=0)
        io_uring_register(ring.fd, IORING_REGISTER_PBUF_RING, ctypes.byref(reg), 1)
        prep_send(sqe, fd, 0, 0, 0)      # no address: the buffers are the kernel's pick
        sqe.flags, sqe.ioprio, sqe.buf_group = IOSQE_BUFFER_SELECT, IORING_RECVSEND_BUNDLE, 0

    # Unmapped only after probe_send has closed its ring, which gives the buffer ring back.
    with mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as page:   # page-aligned
        return probe_send("6.10", "a SEND bundle of 2 provided buffers", prep)


def newer_features(probe: Probe) -> Dict[str, dict]:
    """The rows of --probe's newer features, each the kernel's own answer."""
    def zc_bundle(sqe: io_uring_sqe, fd: int, addr: int, ring: Ring) -> None:
        prep_send_zc(sqe, fd, addr, len(PROBE_DATA), 0, IORING_RECVSEND_BUNDLE)
    return {
        "sendmsg_zc_fixed_buf": probe_send("6.15", "SENDMSG_ZC from a registered buffer", sendmsg_zc_fixed),
        "send_vectorized": probe_send("6.17", "SEND with IORING_SEND_VECTORIZED", vectorized(False)),
        "send_zc_vectorized": probe_send("6.17", "SEND_ZC with IORING_SEND_VECTORIZED", vectorized(True)),
        "send_bundle": probe_send_bundle(),
        # Bundles take provided buffers, zero-copy takes ours: SEND_ZC refuses the flag.
        "send_zc_bundle": probe_send("6.10", "SEND_ZC with IORING_RECVSEND_BUNDLE", zc_bundle,
                                     "EINVAL: SEND_ZC does not take them (bundles are SEND's alone)"),
        "zero_copy_receive": probe_zcrx(probe),
    }


# What IORING_REGISTER_ZCRX_IFQ's refusal of an unreadable argument says (probe_zcrx).
ZCRX_ANSWERS = {
    errno.EFAULT: (True, "IORING_REGISTER_ZCRX_IFQ too (EFAULT on our unreadable argument); "
                         "using it needs CAP_NET_ADMIN and a NIC with header split"),
    errno.EPERM: (True, "here, but IORING_REGISTER_ZCRX_IFQ needs CAP_NET_ADMIN (EPERM)"),
    errno.EOPNOTSUPP: (False, "built without CONFIG_IO_URING_ZCRX (EOPNOTSUPP)"),
}


def probe_zcrx(probe: Probe) -> dict:
    """Zero-copy receive (6.15): the opcode, and liburing's io_uring_register_ifq(), asked for real.

    A real registration needs CAP_NET_ADMIN and a NIC that splits headers from
    data and gives a queue away (bnxt, mlx5, gve, ...; not loopback or veth). So
    we register from an unreadable page, on the ring it wants (DEFER_TASKRUN,
    32-byte CQEs), and read the refusal (ZCRX_ANSWERS); an older kernel says EINVAL.
    """
    if not probe.has(IORING_OP_RECV_ZC):
        return feature("6.15", False, "no IORING_OP_RECV_ZC in IORING_REGISTER_PROBE")
    with mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as page:
        unreadable = _addr_of(page)
        if _libc.mprotect(ctypes.c_void_p(unreadable), ctypes.c_size_t(PAGE), PROT_NONE):
            return feature("6.15", False, "not asked: mprotect: " + errno_words(ctypes.get_errno()))
        try:
            fd = io_uring_setup(4, io_uring_params(flags=IORING_SETUP_SINGLE_ISSUER |
                                                   IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQE32))
            try:                        # never mapped: only io_uring_register is asked
                io_uring_register(fd, IORING_REGISTER_ZCRX_IFQ, ctypes.c_void_p(unreadable), 1)
            finally:
                os.close(fd)
        except OSError as e:
            return feature("6.15", *ZCRX_ANSWERS.get(
                e.errno, (False, f"IORING_REGISTER_ZCRX_IFQ: {errno_words(e.errno)}")))
    return feature("6.15", False, "IORING_REGISTER_ZCRX_IFQ read an unreadable page")    # cannot be


def limit(ok: bool, value, need, answer: str, fix: Optional[str]) -> dict:
    """One row of --probe's limits: where it stands, what zero-copy needs, and the fix if short."""
    return {"ok": ok, "value": value, "need": need, "answer": answer, "fix": None if ok else fix}


def memlock_room() -> dict:
    """RLIMIT_MEMLOCK, which the default sender's ring and buffer count against without CAP_IPC_LOCK."""
    cfg = SendConfig()
    payload = Payload(cfg.size)
    need = f"{payload.length >> 10} KiB registered buffer and a ring of {cfg.entries} entries"
    fix = ("raise it: `ulimit -l 1024` (or more) in the shell that runs sendzc, `memlock` in "
           "/etc/security/limits.conf, LimitMEMLOCK= for a service; or run as root")
    try:
        with Ring(cfg.entries, cq_entries=CQ_ENTRIES_PER_SQ * cfg.entries, attempts=SETUP_ATTEMPTS) as ring:
            ring.register_buffers([(payload.addr, payload.length)])
    except OSError as e:
        step = "the ring" if getattr(e, "syscall", None) == "io_uring_setup" else "the registered buffer"
        ok, answer = False, (f"too low: {step} did not fit (ENOMEM)" if e.errno == errno.ENOMEM
                             else f"not asked: {e.strerror}")
    else:
        ok, answer = True, ("not counted: this process has CAP_IPC_LOCK" if has_cap(CAP_IPC_LOCK)
                            else "the ring and the registered buffer fit")
    finally:
        payload.close()
    return limit(ok, memlock_limit(), need, answer, fix)


def optmem_room() -> dict:
    """net.core.optmem_max (this namespace's since 6.9, the host's before) against MSG_ZEROCOPY_OPTMEM."""
    value = read_sysctl("net/core/optmem_max")
    answer = ("unreadable (/proc/sys/net/core/optmem_max)" if value is None else
              "short: MSG_ZEROCOPY sends will meet ENOBUFS and wait for completions"
              if value < MSG_ZEROCOPY_OPTMEM else "room for MSG_ZEROCOPY's completions")
    return limit(value is not None and value >= MSG_ZEROCOPY_OPTMEM, value, MSG_ZEROCOPY_OPTMEM, answer,
                 f"`sysctl -w net.core.optmem_max={MSG_ZEROCOPY_OPTMEM}` as root")


def udp_segment_room() -> dict:
    """UDP_SEGMENT (UDP GSO, 4.18): one send of two segments arrives as two datagrams, over loopback."""
    fix = ("without it a UDP send larger than the path's MTU is fragmented, and every fragmented "
           "send is copied: keep -s under the MTU, or use a kernel of 4.18 or later")
    try:
        with loopback_udp() as (tx, rx):
            tx.setsockopt(SOL_UDP, UDP_SEGMENT, GSO_PROBE_SEGMENT)
            tx.send(pattern(GSO_PROBE_SEGMENT * GSO_PROBE_SEGMENTS))
            sizes = [len(rx.recv(IP_MAXPACKET)) for _ in range(GSO_PROBE_SEGMENTS)]
    except OSError as e:
        words = "absent (ENOPROTOOPT)" if e.errno == errno.ENOPROTOOPT else f"not asked: {e.strerror or e}"
        return limit(False, False, True, words, fix)
    ok = sizes == [GSO_PROBE_SEGMENT] * GSO_PROBE_SEGMENTS
    return limit(ok, ok, True, f"one send of {GSO_PROBE_SEGMENT * GSO_PROBE_SEGMENTS} bytes arrived as "
                 f"datagrams of {', '.join(map(str, sizes))} bytes", fix)


def zero_copy_limits() -> Dict[str, dict]:
    return {"memlock": memlock_room(), "optmem_max": optmem_room(), "udp_segment": udp_segment_room()}


# What each value of the sysctl kernel.io_uring_disabled (6.6) means, for --probe.
IO_URING_DISABLED_MEANS = {0: "(io_uring for everyone)", 1: "(root and io_uring_group only)",
                           2: "(io_uring off for everyone)"}
NEWER_NAMES = {"sendmsg_zc_fixed_buf": "SENDMSG_ZC from a registered buffer",
               "send_vectorized": "SEND, IORING_SEND_VECTORIZED",
               "send_zc_vectorized": "SEND_ZC, IORING_SEND_VECTORIZED",
               "send_bundle": "SEND bundles, IORING_RECVSEND_BUNDLE",
               "send_zc_bundle": "SEND_ZC bundles",
               "zero_copy_receive": "zero-copy receive, IORING_OP_RECV_ZC"}


def describe_capabilities(caps: dict) -> List[str]:
    """--probe's text: a line for each answer, and a fix under each limit that falls short."""
    def yes(v):
        return "yes" if v is True else f"no ({v})" if v else "no"
    disabled = caps["io_uring_disabled"]
    lines = [f"kernel {caps['kernel']} ({caps['machine']}), Python {platform.python_version()}",
             "kernel.io_uring_disabled = " + ("(absent: before 6.6)" if disabled is None else
                                              f"{disabled} " + IO_URING_DISABLED_MEANS.get(disabled, ""))]
    if "setup_error" in caps:
        return lines + [f"{caps['missing'][-1]}: refused: {caps['setup_error']}"]
    lines += [f"features ({len(caps['features'])}): "
              + " ".join(f.replace("IORING_FEAT_", "") for f in caps["features"]),
              "setup flags: " + "  ".join(f"{k} {yes(v)}" for k, v in caps["setup_flags"].items()),
              "opcodes: " + "  ".join(f"{k.replace('IORING_OP_', '')} {yes(v)}"
                                      for k, v in caps["opcodes"].items()),
              f"SEND_ZC REPORT_USAGE (6.2): {yes(caps['send_zc_report_usage'])}",
              f"registered files {yes(caps['registered_files'])}  buffers {yes(caps['registered_buffers'])}  "
              f"ring fd (5.18) {yes(caps['registered_ring_fd'])}",
              "newer features (each asked of this kernel, not read from its version):"]
    lines += [f"  {NEWER_NAMES.get(key, key)} ({row['since']}): {'yes' if row['supported'] else 'no'}: "
              f"{row['answer']}" for key, row in caps["newer"].items()]
    lines.append("limits that decide whether zero-copy works for this user:")
    limits = caps["limits"]
    titles = {"memlock": f"RLIMIT_MEMLOCK {limits['memlock']['value']}",
              "optmem_max": f"net.core.optmem_max {limits['optmem_max']['value']} "
                            f"(MSG_ZEROCOPY wants {MSG_ZEROCOPY_OPTMEM})",
              "udp_segment": "UDP_SEGMENT (UDP GSO, 4.18)"}
    for key, row in limits.items():
        lines.append(f"  {titles.get(key, key)}: {'ok' if row['ok'] else 'SHORT'}: {row['answer']}")
        if row["fix"]:
            lines.append(f"    fix: {row['fix']}")
    if caps["missing"] == [NO_SEND_ZC]:
        lines.append(f"verdict: no zero-copy send on this kernel: missing {NO_SEND_ZC}; what runs here: "
                     f"--no-zc (IORING_OP_SEND, which copies), and bench's send(2), MSG_ZEROCOPY and "
                     f"io_uring SEND rows")
    else:
        lines.append("verdict: " + ("everything the zero-copy sender needs is here" if not caps["missing"]
                                    else "missing " + ", ".join(caps["missing"])))
    return lines


# --- Signals, errors, and the dispatch -----------------------------------------
#
# SIGTERM (`timeout`, `kill`, a job scheduler) and SIGHUP (the terminal went
# away) mean what Ctrl-C means: stop, and print what was measured. The exit
# status says which: 128+N for signal N, as a shell reports a process it
# killed: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP.


def signal_label(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def on_sigint(signum, frame):
    """Ctrl-C (or SIGTERM, SIGHUP), three times over.

    First: end the run after this batch, drain the notifications (DRAIN_SECONDS
    at most), print the partial result. Second: stop draining (the payload stays
    mapped, see Payload.close). Only a third raises KeyboardInterrupt, for a
    program stuck where no loop looks at STOP: raised in a run, it skips the drain.
    """
    if STOP.hurry:
        raise KeyboardInterrupt
    if not STOP.requested:
        STOP.signum = signum
    STOP.hurry = STOP.requested
    STOP.requested = True


# What to do about an errno nothing closer expected (see oserror_line).
OSERROR_FIXES = {
    errno.EMFILE: "raise the limit on open files (`ulimit -n`: {nofile})",
    errno.ENFILE: "the whole system is out of open files: raise fs.file-max, or close programs",
    errno.ENOMEM: "free some memory, or ask for less (-s, --entries, -n)",
    errno.EPIPE: "whatever read our output has gone: read it to the end",
}


def main(argv: Optional[List[str]] = None) -> int:
    """Dispatch on the first word: rx, bench (or nothing), --probe, else the sender.

    Every way out is one line on stderr and a status: Fatal says its own (2 for usage, 1 for
    the system), a signal 128+N (Ctrl-C 130), any other OSError one line naming the call and
    the errno (1); anything else is a bug in this file and keeps its traceback. The handlers
    of EARLY_SIGNALS are ours only while main() runs: a caller (a test) gets its own back.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    STOP.requested = STOP.hurry = False
    STOP.signum = signal.SIGINT
    JSON_OUT.made = False

    def refuse(line: str, status: int) -> int:
        # Under --json, a run that ended before its document still makes one, saying why
        # (params null: the options may not even parse): a pipeline into jq gets a document.
        words = argv[:argv.index("--")] if "--" in argv else argv
        if "--json" in words and not JSON_OUT.made:
            print(json.dumps(json_doc(None, [], {"error": line}), indent=2), flush=True)
        print(f"sendzc: {line}", file=sys.stderr)
        return status
    # Ours until the last line is out: a signal while the report prints
    # sets STOP, which nothing reads any more, instead of killing it half-way.
    previous = {signum: signal.signal(signum, on_sigint) for signum in EARLY_SIGNALS}
    try:
        if _early_signals:                 # (see _signal_before_main)
            STOP.signum = _early_signals.pop()
            raise Fatal(f"interrupted ({signal_label(STOP.signum)}) while starting: nothing was sent", 130)
        status = dispatch(argv)
    except Fatal as e:
        return refuse(str(e), 128 + STOP.signum if e.status == 130 else e.status)
    except KeyboardInterrupt:
        return refuse("interrupted three times: stopped at once, without waiting for notifications "
                      "or printing a result", 128 + STOP.signum)
    except OSError as e:
        if e.errno == errno.EPIPE:
            # stdout is a closed pipe: no document can go out, and the interpreter's own
            # flush at exit would fail again and complain twice: point stdout at /dev/null.
            JSON_OUT.made = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return refuse(oserror_line(e), 1)
    else:
        if status == 130:
            print(f"sendzc: interrupted ({signal_label(STOP.signum)}): the result above is partial",
                  file=sys.stderr)
            return 128 + STOP.signum
        return status
    finally:
        for signum, handler in previous.items():
            # As a program, the handler before ours was _signal_before_main,
            # which would report a start that is over: ignore signals instead,
            # for the moment left before exit.
            signal.signal(signum, signal.SIG_IGN if handler is _signal_before_main else handler)


def dispatch(argv: List[str]) -> int:
    if argv[:1] == ["rx"]:
        return rx_main(argv[1:])
    if not argv or argv[0] == "bench":
        return bench_main(argv[1:])
    if "--probe" in argv:
        return probe_main(argv)
    if "--first-send" in argv:
        return first_send_main(argv)
    parser = sender_parser()
    check_bench_options(argv, parser)
    a = parser.parse_args(argv)
    return run_sender(sender_config(a), a.json, a.interval)


def check_bench_options(argv: List[str], sender: argparse.ArgumentParser) -> None:
    """An option only bench has, given to the sender: the mistake, and the command that works.

    Else argparse reads `--sizes 1400` as an unknown option and 1400 as the
    protocol, and `--sweep` as "no protocol given".
    """
    bench = bench_parser()
    words = argv[:argv.index("--")] if "--" in argv else argv
    for option in (word.split("=", 1)[0] for word in words):
        if (option.startswith("-") and option not in sender._option_string_actions
                and option in bench._option_string_actions):
            try:
                bench_config(bench.parse_args(argv))         # would `sendzc.py bench ARGV` run?
            except UsageError:
                raise UsageError(f"{option} is an option of `sendzc.py bench`, not of the sender: "
                                 f"see `python3 sendzc.py bench --help`") from None
            raise UsageError(f"{option} is an option of `sendzc.py bench`: run `{command(['bench', *argv])}`")


if __name__ == "__main__":
    sys.exit(main())
