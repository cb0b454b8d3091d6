//! The CPU deadline of a plugin that may wait: time spent in host calls (the network, the
//! key-value store, `wasi:io/poll`) is not the plugin's CPU, so it is taken out of the
//! epoch deadline. A store call hook clocks the guest's own stretches — from each entry
//! into wasm (a call from the host, a host call returning) to each exit (a return to the
//! host, a call of the host) — so a host call that calls back into the guest (to allocate
//! the list it returns, through `cabi_realloc`) counts only the guest's part. When the
//! epoch deadline comes due, the callback compares the guest's time in this hook call
//! with the plugin's `timeout` and either traps (`Trap::Interrupt`, reported as a timeout
//! like any other) or pushes the deadline out by what is left. Waiting itself is bounded
//! by `io_timeout` in the pool.
//!
//! Plugins without capabilities keep the plain trapping deadline: nothing they can call
//! waits, and they pay for no call hook.

use super::host::HostState;
use std::time::{Duration, Instant};
use wasmtime::{CallHook, Store, UpdateDeadline};

/// One hook call's account of the guest's time.
pub struct Budget {
    cpu: Duration,
    tick: Duration,
    /// The guest's time in this call, its current stretch not included.
    in_wasm: Duration,
    /// When the guest's current stretch began; `None` while the host runs.
    since: Option<Instant>,
}

impl Budget {
    pub fn new(cpu: Duration, tick: Duration) -> Self {
        Budget {
            cpu,
            tick,
            in_wasm: Duration::ZERO,
            since: None,
        }
    }

    /// A new hook call begins.
    pub fn start(&mut self) {
        self.in_wasm = Duration::ZERO;
        self.since = None;
    }

    fn hook(&mut self, h: CallHook) {
        if h.exiting_host() {
            self.since = Some(Instant::now());
        } else if let Some(t) = self.since.take() {
            self.in_wasm += t.elapsed();
        }
    }

    /// Time spent running the guest in this call.
    fn spent(&self) -> Duration {
        self.in_wasm + self.since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// The epoch deadline came due: trap if the guest has had its CPU time, else the
    /// ticks it has left.
    fn due(&self) -> wasmtime::Result<UpdateDeadline> {
        let spent = self.spent();
        if spent >= self.cpu {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        let left = (self.cpu - spent).as_micros() / self.tick.as_micros().max(1);
        Ok(UpdateDeadline::Continue(left.max(1) as u64))
    }
}

/// Installs the call hook and the epoch callback on a capability plugin's store.
pub fn install(store: &mut Store<HostState>) {
    store.call_hook(|mut cx, h| {
        cx.data_mut().budget.hook(h);
        Ok(())
    });
    store.epoch_deadline_callback(|cx| cx.data().budget.due());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_time_is_not_spent() {
        let mut b = Budget::new(Duration::from_millis(50), Duration::from_millis(1));
        b.start();
        b.hook(CallHook::CallingWasm);
        b.hook(CallHook::CallingHost);
        std::thread::sleep(Duration::from_millis(80));
        b.hook(CallHook::ReturningFromHost);
        assert!(b.spent() < Duration::from_millis(50));
        assert!(matches!(b.due(), Ok(UpdateDeadline::Continue(n)) if n >= 1));
        b.start();
        b.hook(CallHook::CallingWasm);
        std::thread::sleep(Duration::from_millis(60));
        let Err(e) = b.due() else {
            panic!("60 ms of guest time is past a 50 ms budget")
        };
        assert_eq!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt)
        );
    }

    /// A host call that waits, then calls back into the guest (`cabi_realloc` for the list
    /// it returns), where the epoch deadline that passed during the wait comes due: the
    /// wait is still the host's.
    #[test]
    fn a_deadline_due_inside_a_host_call_does_not_count_the_host_wait() {
        let mut b = Budget::new(Duration::from_millis(50), Duration::from_millis(1));
        b.start();
        b.hook(CallHook::CallingWasm);
        b.hook(CallHook::CallingHost);
        std::thread::sleep(Duration::from_millis(80));
        // The host lowers its answer: into the guest's realloc, whose entry finds the
        // deadline passed and calls the epoch libcall (itself a host call).
        b.hook(CallHook::CallingWasm);
        b.hook(CallHook::CallingHost);
        assert!(
            b.spent() < Duration::from_millis(50),
            "spent {:?}",
            b.spent()
        );
        assert!(matches!(b.due(), Ok(UpdateDeadline::Continue(_))));
        b.hook(CallHook::ReturningFromHost);
        b.hook(CallHook::ReturningFromWasm);
        b.hook(CallHook::ReturningFromHost);
        assert!(b.spent() < Duration::from_millis(50));
    }
}
