use super::*;

const T: Duration = Duration::from_secs(10);

fn registry(cap: usize) -> &'static Registry {
    Box::leak(Box::new(Registry::new(cap)))
}

fn read(w: &Watch, data: &[u8]) {
    w.shared.on_read(data);
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn cut_now(w: &Watch, closing: Option<Closing>) -> Option<Cut> {
    tokio::time::timeout(Duration::ZERO, w.cut(closing)).await.ok()
}

#[tokio::test(start_paused = true)]
async fn the_first_head_is_due_from_opening_and_the_next_from_going_idle() {
    let w = Watch::with_registry(T, registry(10));
    let opened = Instant::now();
    assert_eq!(w.cut(None).await, Cut::Overdue);
    assert_eq!(opened.elapsed(), T, "never a byte: due 10 s after opening");

    let w = Watch::with_registry(T, registry(10));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let req = w.request();
    // Nothing is due while a request is in flight, however long it takes.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(cut_now(&w, None).await, None);
    drop(req);
    let idle = Instant::now();
    assert_eq!(w.cut(None).await, Cut::Overdue);
    assert_eq!(idle.elapsed(), T, "due 10 s after the last response");
}

#[tokio::test(start_paused = true)]
async fn an_h2_header_block_is_due_from_its_first_byte_beside_streams_in_flight() {
    let w = Watch::with_registry(T, registry(10));
    let mut opening = H2_PREFACE.to_vec();
    opening.extend(frame(0x4, 0, 0, &[]));
    read(&w, &opening);
    let _in_flight = w.request();
    // DATA frames, split anywhere, are bodies: never due.
    let data = frame(DATA, 0, 1, &[7; 100]);
    read(&w, &data[..4]);
    read(&w, &data[4..50]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(cut_now(&w, None).await, None);
    read(&w, &data[50..]);
    // HEADERS without END_HEADERS, then a CONTINUATION a byte at a time.
    let started = Instant::now();
    read(&w, &frame(HEADERS, 0, 3, &[0x82, 0x86]));
    let cont = frame(CONTINUATION, END_HEADERS, 3, &[0x84; 20]);
    tokio::time::sleep(Duration::from_secs(9)).await;
    read(&w, &cont[..3]);
    assert_eq!(w.cut(None).await, Cut::Overdue);
    assert_eq!(started.elapsed(), T, "due from the HEADERS frame's first byte");

    // The same block completed in time is no longer due.
    let w = Watch::with_registry(T, registry(10));
    read(&w, &opening);
    let _in_flight = w.request();
    read(&w, &frame(HEADERS, 0, 3, &[0x82]));
    tokio::time::sleep(Duration::from_secs(5)).await;
    read(&w, &cont);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(cut_now(&w, None).await, None);
}

#[tokio::test(start_paused = true)]
async fn http1_bytes_are_not_parsed_and_heads_are_marked_by_the_service() {
    let reg = registry(10);
    let w = Watch::with_registry(T, reg);
    read(&w, b"GET / HTTP/1.1\r\nHost: a\r\n");
    assert!(matches!(w.shared.lock().sniff, Sniff::Http1));
    assert_eq!(reg.len(), 1, "an unfinished head counts against the cap");
    let req = w.request();
    assert_eq!(reg.len(), 0);
    read(&w, b"a request body, however slow");
    assert_eq!(reg.len(), 0, "bytes of a request in flight are no head");
    drop(req);
    read(&w, b"GET /next");
    assert_eq!(reg.len(), 1);
    drop(w);
    assert_eq!(reg.len(), 0, "a closed connection leaves the registry");
}

#[test]
fn frames_are_followed_the_same_however_the_reads_split_them() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    for round in 0..500 {
        let mut stream = H2_PREFACE.to_vec();
        for _ in 0..rng.gen_range(0..20) {
            let kind = [DATA, HEADERS, CONTINUATION, 0x4, 0x6, 0x8, rng.r#gen()][rng.gen_range(0..7)];
            let len = rng.gen_range(0..300);
            let payload: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            stream.extend(frame(kind, rng.r#gen(), rng.r#gen(), &payload));
        }
        if round % 5 == 0 {
            // Garbage and a cut frame: followed without a panic, whatever it says.
            stream.extend((0..rng.gen_range(0..40)).map(|_| rng.r#gen::<u8>()));
        }
        let fresh = || State::new(1);
        let now = Instant::now();
        let mut whole = fresh();
        whole.follow_frames(&stream, now);
        let mut split = fresh();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let k = rng.gen_range(1..=rest.len().min(64));
            split.follow_frames(&rest[..k], now);
            rest = &rest[k..];
        }
        assert_eq!(
            (whole.sniff, whole.in_block, whole.frame_since.is_some()),
            (split.sniff, split.in_block, split.frame_since.is_some()),
            "round {round}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn beyond_the_cap_the_oldest_unfinished_head_is_evicted() {
    let reg = registry(3);
    let watches: Vec<Watch> = (0..5).map(|_| Watch::with_registry(T, reg)).collect();
    // A connection that has sent nothing holds no buffers and is not counted.
    assert_eq!(reg.len(), 0);
    for w in &watches {
        read(w, b"GET");
    }
    assert_eq!(reg.len(), 3);
    assert_eq!(cut_now(&watches[0], None).await, Some(Cut::Evicted));
    assert_eq!(cut_now(&watches[1], None).await, Some(Cut::Evicted));
    for w in &watches[2..] {
        assert_eq!(cut_now(w, None).await, None);
    }
    // A finished head leaves room, so nobody else is evicted by the next one.
    let _req = watches[2].request();
    let w = Watch::with_registry(T, reg);
    read(&w, b"GET");
    assert_eq!(cut_now(&watches[3], None).await, None);
    assert_eq!(reg.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn closing_ends_once_nothing_is_in_flight_or_at_the_grace() {
    let w = Watch::with_registry(T, registry(10));
    let req = w.request();
    let since = Instant::now();
    let closing = Closing {
        since,
        by: Some(since + T),
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(req);
    assert_eq!(w.cut(Some(closing)).await, Cut::Closed);
    assert_eq!(since.elapsed(), Duration::from_secs(3) + CLOSE_LINGER);

    let w = Watch::with_registry(T, registry(10));
    let _req = w.request();
    let since = Instant::now();
    let closing = Closing {
        since,
        by: Some(since + T),
    };
    assert_eq!(w.cut(Some(closing)).await, Cut::Closed);
    assert_eq!(since.elapsed(), T, "a request in flight gets the grace, no more");
    let forever = Closing { since, by: None };
    assert_eq!(cut_now(&w, Some(forever)).await, None, "without a bound, it waits for the request");
}
