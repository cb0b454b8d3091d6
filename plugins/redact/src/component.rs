//! The component glue: the `stream-transform` world's exports.

// The generated lowering of `stream-info` and `event` takes one argument per field.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;

use crate::mask::{Outcome, Redactor, Stream};

wit_bindgen::generate!({ world: "stream-transform", path: "../../wit" });

use portcullis::plugin::events::Framing;

thread_local! {
    static REDACTOR: RefCell<Option<Redactor>> = const { RefCell::new(None) };
    /// The stream this instance is held for (the gateway gives one instance one stream at
    /// a time; `open-stream` starts afresh).
    static STREAM: RefCell<Option<Stream>> = const { RefCell::new(None) };
}

struct Plugin;

impl Guest for Plugin {
    fn configure(config: String) -> Result<(), String> {
        let r = Redactor::from_json(&config)?;
        REDACTOR.with(|c| *c.borrow_mut() = Some(r));
        Ok(())
    }

    fn declare_hooks() -> Hooks {
        Hooks::empty()
    }

    fn on_request(_req: &Request) -> RequestAction {
        RequestAction::Proceed
    }

    fn on_response(_req: &Request, _resp: &Response) {}

    fn open_stream(info: StreamInfo) -> bool {
        if info.framing != Framing::Sse {
            return false;
        }
        REDACTOR.with(|r| {
            let r = r.borrow();
            let r = r.as_ref().expect("configured");
            STREAM.with(|s| *s.borrow_mut() = Some(Stream::new(r)));
        });
        true
    }

    fn on_event(event: Event, _usage: Option<Usage>) -> EventAction {
        REDACTOR.with(|r| {
            let r = r.borrow();
            let r = r.as_ref().expect("configured");
            STREAM.with(|s| {
                let mut s = s.borrow_mut();
                let stream = s.get_or_insert_with(|| Stream::new(r));
                match stream.event(r, &event.data) {
                    Outcome::Pass => EventAction::Pass,
                    Outcome::Replace(data) => EventAction::Replace(data),
                }
            })
        })
    }
}

export!(Plugin);
