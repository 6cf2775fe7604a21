//! Arbitrary bytes as a chunked request body, decoded by hyper's HTTP/1 server with the
//! listeners' settings and read through `RequestBody` with its size limit and an observer, as the
//! proxy forwards it. Never panics; nothing past the limit is passed on or observed; the count of
//! bytes received is exact; the observers' end is signalled only for a complete body.
#![no_main]

use std::{cell::Cell, rc::Rc, time::Duration};

use bytes::Bytes;
use gateway_fuzz::{serve_http1, small_limits};
use gateway_userspace::{
    proxy::{BodyError, RequestBody},
    request::RequestObserver,
};
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;

const HEAD: &[u8] = b"POST /upload HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n";

/// What the observers were shown.
#[derive(Default)]
struct Seen {
    bytes: Cell<u64>,
    ended: Cell<bool>,
}

struct Observer(Rc<Seen>);

impl RequestObserver for Observer {
    fn on_data(&mut self, data: &Bytes) {
        assert!(!self.0.ended.get(), "data after the end");
        self.0.bytes.set(self.0.bytes.get() + data.len() as u64);
    }

    fn on_end(&mut self) {
        assert!(!self.0.ended.replace(true), "ended twice");
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit (0 to 1020 bytes), so inputs cross it or stay under it.
    let Some((&limit, body)) = data.split_first() else { return };
    let limit = u64::from(limit) * 4;
    let input = [HEAD, body].concat();
    serve_http1(&small_limits(), &input, |req| async move {
        let received = Rc::new(Cell::new(0));
        let seen = Rc::new(Seen::default());
        // The input is all there (then end of stream): the client body timeout never fires.
        let mut body = RequestBody::new(
            Some(req.into_body().into()),
            limit,
            received.clone(),
            Duration::from_secs(60),
            std::time::Instant::now(),
        )
        .observed(vec![Box::new(Observer(seen.clone()))]);
        let mut passed = 0u64;
        let error = loop {
            match body.frame().await {
                None => break None,
                Some(Ok(frame)) => passed += frame.data_ref().map_or(0, |d| d.len() as u64),
                Some(Err(e)) => break Some(e),
            }
        };
        assert!(passed <= limit, "{passed} bytes passed a {limit}-byte limit");
        assert_eq!(seen.bytes.get(), passed, "observers saw other bytes than were passed on");
        match error {
            None => {
                assert!(seen.ended.get(), "a complete body was not signalled to the observers");
                assert_eq!(received.get(), passed, "received count");
            }
            Some(BodyError::TooLarge { .. }) => {
                assert!(received.get() > limit, "refused at {} of {limit} bytes", received.get());
                assert!(!seen.ended.get(), "a refused body was signalled as complete");
                assert!(body.frame().await.is_none(), "a refused body goes on");
            }
            Some(_) => {
                assert!(!seen.ended.get(), "a failed body was signalled as complete");
                assert_eq!(received.get(), passed, "received count");
            }
        }
    });
});
