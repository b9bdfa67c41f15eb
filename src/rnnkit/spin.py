"""Two threads that wait for each other by spinning, in compiled code (numba, optional).

rnnkit's packed products and its loop over time (``packed.py``, ``nn/timeloop.py``) share their
work between the calling thread and one helper. A step of the loop lasts tens of microseconds
and a product a few milliseconds, while waking a thread that sleeps on a lock or a condition
took 35-200 us on the 2-core machine of the benchmarks (a virtual one: an idle core is halted,
and waking it goes through the host). So the threads wait for each other by spinning on
integers in a shared ``int64`` array, read with acquire order and written with release order,
the way OpenMP's threads wait between two parallel regions. A long wait calls the C library's
``sched_yield`` now and then, in case the other thread is waiting for this core.

Everything here runs without Python's GIL (``nogil=True``); the thread that spins holds
nothing that the other needs.
"""
from __future__ import annotations

import ctypes
import functools

try:
    import numba
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic
except ImportError:                                   # pragma: no cover - numba is optional
    numba = None

SPINS = 1 << 14        # spins of a wait between two sched_yield calls


def available() -> bool:
    return numba is not None


@functools.cache
def sched_yield() -> int:
    """The address of the C library's ``sched_yield``, or 0 where there is none."""
    try:
        return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0
    except (OSError, AttributeError, TypeError):                  # pragma: no cover - not POSIX
        return 0


if numba is not None:
    @intrinsic
    def load_acquire(typingctx, arr, i):
        """``arr[i]`` of an int64 array, read atomically with acquire order."""
        sig = types.int64(arr, i)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
            return builder.load_atomic(ptr, ordering="acquire", align=8)
        return sig, codegen

    @intrinsic
    def store_release(typingctx, arr, i, v):
        """``arr[i] = v`` into an int64 array, written atomically with release order."""
        sig = types.void(arr, i, v)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
            builder.store_atomic(context.cast(builder, args[2], sig.args[2], types.int64), ptr,
                                 ordering="release", align=8)
            return context.get_dummy_value()
        return sig, codegen

    @intrinsic
    def call_void(typingctx, addr):
        """Call the C function ``void f(void)`` at address ``addr``."""
        sig = types.void(addr)

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [])
            return context.get_dummy_value()
        return sig, codegen

    _jit = numba.njit(nogil=True, cache=True, error_model="numpy")

    @_jit
    def wait_for(flags, i, target, spins, yield_addr):
        """Spin until ``flags[i] >= target``, at most ``spins`` times (< 0: no limit), calling
        ``sched_yield`` (at ``yield_addr``, when not 0) every ``SPINS`` spins. True when it
        came."""
        n = 0
        while load_acquire(flags, i) < target:
            n += 1
            if n == spins:
                return False
            if n % SPINS == 0 and yield_addr != 0:
                call_void(yield_addr)
        return True

    @_jit
    def post_and_wait(flags, i, v, j, target, spins, grace, yield_addr):
        """``flags[i] = v``, then spin until ``flags[j] >= target`` (at most ``spins`` times),
        then ``grace`` spins more; True when it came."""
        store_release(flags, i, v)
        came = wait_for(flags, j, target, spins, yield_addr)
        for n in range(grace):
            if load_acquire(flags, i) < 0:            # never: a spin that is not optimised away
                break
        return came
