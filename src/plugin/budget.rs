//! The CPU deadline of a plugin that may wait: time spent in host calls (the network, the
//! key-value store, `wasi:io/poll`) is not the plugin's CPU, so it is taken out of the
//! epoch deadline. A store call hook adds up the time between entering and leaving the
//! host; when the epoch deadline comes due, the callback compares the time spent in wasm
//! (wall time since the call began, less the host's) with the plugin's `timeout` and
//! either traps (`Trap::Interrupt`, reported as a timeout like any other) or pushes the
//! deadline out by what is left. Waiting itself is bounded by `io_timeout` in the pool.
//!
//! Plugins without capabilities keep the plain trapping deadline: nothing they can call
//! waits, and they pay for no call hook.

use super::host::HostState;
use std::time::{Duration, Instant};
use wasmtime::{CallHook, Store, UpdateDeadline};

/// One hook call's account of where its time went.
pub struct Budget {
    cpu: Duration,
    tick: Duration,
    started: Instant,
    in_host: Duration,
    entered: Option<Instant>,
}

impl Budget {
    pub fn new(cpu: Duration, tick: Duration) -> Self {
        Budget {
            cpu,
            tick,
            started: Instant::now(),
            in_host: Duration::ZERO,
            entered: None,
        }
    }

    /// A new hook call begins.
    pub fn start(&mut self) {
        self.started = Instant::now();
        self.in_host = Duration::ZERO;
        self.entered = None;
    }

    fn hook(&mut self, h: CallHook) {
        match h {
            CallHook::CallingHost => self.entered = Some(Instant::now()),
            CallHook::ReturningFromHost => {
                if let Some(t) = self.entered.take() {
                    self.in_host += t.elapsed();
                }
            }
            CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
        }
    }

    /// Time spent running the guest in this call.
    fn spent(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.in_host)
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
        b.hook(CallHook::CallingHost);
        std::thread::sleep(Duration::from_millis(80));
        b.hook(CallHook::ReturningFromHost);
        assert!(b.spent() < Duration::from_millis(50));
        assert!(matches!(b.due(), Ok(UpdateDeadline::Continue(n)) if n >= 1));
        b.start();
        std::thread::sleep(Duration::from_millis(60));
        let Err(e) = b.due() else {
            panic!("60 ms of guest time is past a 50 ms budget")
        };
        assert_eq!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt)
        );
    }
}
