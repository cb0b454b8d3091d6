//! `stream-probe`: a `stream-transform` test plugin. Every event whose data contains
//! `trigger` (every event when it is absent) gets `action`:
//!
//! - `pass` (default): nothing (the no-op plugin of `bench/events.sh`);
//! - `upper`: replaced by its data in upper case;
//! - `drop`: dropped;
//! - `end`: the stream ends with a final event `event: end` whose data is
//!   `{"seen": N}` (N: events this instance saw in this stream);
//! - `trap`: panics; `loop`: loops forever (the CPU deadline stops it).
//!
//! Other events pass. `open_stream = false` declines every stream; `tag_ids = true`
//! replaces each passed event's data with `N:data` (N counts from 1 per stream, so a test
//! sees that state survives across events and is reset per stream).
//!
//! Config: `{"action": "...", "trigger": "...", "open_stream": true, "tag_ids": false}`.

#[cfg(target_arch = "wasm32")]
// The generated lowering of `stream-info` and `event` takes one argument per field.
#[allow(clippy::too_many_arguments)]
mod component {
    use std::sync::Mutex;

    use serde::Deserialize;

    wit_bindgen::generate!({ world: "stream-transform", path: "../../../wit" });

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Config {
        action: Option<String>,
        trigger: Option<String>,
        open_stream: Option<bool>,
        tag_ids: Option<bool>,
    }

    static CONFIG: Mutex<Option<Config>> = Mutex::new(None);
    static SEEN: Mutex<u64> = Mutex::new(0);

    struct Plugin;

    impl Guest for Plugin {
        fn configure(config: String) -> Result<(), String> {
            let c: Config = support::parse_config(&config)?;
            match c.action.as_deref() {
                None | Some("pass" | "upper" | "drop" | "end" | "trap" | "loop") => {}
                Some(a) => return Err(format!("unknown action `{a}`")),
            }
            *CONFIG.lock().unwrap() = Some(c);
            Ok(())
        }

        fn declare_hooks() -> Hooks {
            Hooks::empty()
        }

        fn on_request(_req: &Request) -> RequestAction {
            RequestAction::Proceed
        }

        fn on_response(_req: &Request, _resp: &Response) {}

        fn open_stream(_info: StreamInfo) -> bool {
            *SEEN.lock().unwrap() = 0;
            CONFIG
                .lock()
                .unwrap()
                .as_ref()
                .is_none_or(|c| c.open_stream.unwrap_or(true))
        }

        fn on_event(event: Event, _usage: Option<Usage>) -> EventAction {
            let seen = {
                let mut s = SEEN.lock().unwrap();
                *s += 1;
                *s
            };
            let guard = CONFIG.lock().unwrap();
            let c = guard.as_ref().expect("configured");
            let hit = c.trigger.as_deref().is_none_or(|t| event.data.contains(t));
            let action = if hit {
                c.action.as_deref().unwrap_or("pass")
            } else {
                "pass"
            };
            match action {
                "upper" => EventAction::Replace(event.data.to_uppercase()),
                "drop" => EventAction::Drop,
                "end" => EventAction::End(Some(Event {
                    name: Some("end".into()),
                    data: format!("{{\"seen\": {seen}}}"),
                    id: None,
                })),
                "trap" => panic!("stream-probe: deliberate panic"),
                "loop" => {
                    let mut x: u64 = 0;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                _ if c.tag_ids == Some(true) => {
                    EventAction::Replace(format!("{seen}:{}", event.data))
                }
                _ => EventAction::Pass,
            }
        }
    }

    export!(Plugin);
}
