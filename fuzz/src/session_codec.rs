//! Cookie values and Cookie headers from the network: nothing may panic, nothing but a
//! value sealed with our key may open, and no tampering (a flipped bit, a cut) may open to
//! anything but the original.

use std::sync::OnceLock;

use http::header::{COOKIE, HeaderMap, HeaderValue};
use sidekey_proxy::session::codec::{Purpose, Sealer};
use sidekey_proxy::session::cookies::RequestCookies;
use sidekey_proxy::session::{LoginState, Session};

const NAME: &str = "_oauth2_proxy";

fn sealers() -> &'static [Sealer; 3] {
    static S: OnceLock<[Sealer; 3]> = OnceLock::new();
    S.get_or_init(|| {
        let key = b"fuzzing-cookie-secret-32-bytes!!";
        [
            Sealer::new(key, Purpose::Session),
            Sealer::new(key, Purpose::Csrf),
            Sealer::new(key, Purpose::Ticket),
        ]
    })
}

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for s in sealers() {
        assert!(s.open::<Session>(NAME, &text).is_err(), "a forged value opened");
        assert!(s.open::<LoginState>(NAME, &text).is_err(), "a forged value opened");
    }

    if let Ok(v) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, v);
        let cookies = RequestCookies::parse(&headers);
        let _ = cookies.session_value(NAME);
        for value in cookies.session_values(NAME) {
            assert!(sealers()[0].open::<Session>(NAME, &value).is_err());
        }
    }

    // Seal a session built from the input, then tamper with it as the input says.
    let (Some(&at), Some(&bit)) = (data.first(), data.get(1)) else {
        return;
    };
    let session = Session {
        user: text.chars().take(64).collect(),
        email: "fuzz@example.com".into(),
        groups: text.split(',').take(8).map(String::from).collect(),
        ..Default::default()
    };
    let sealed = sealers()[0].seal(NAME, &session);
    assert!(
        sealers()[0].open::<Session>(NAME, &sealed).ok() == Some(session.clone()),
        "round trip"
    );
    assert!(
        sealers()[1].open::<Session>(NAME, &sealed).is_err(),
        "another purpose's key opened it"
    );
    assert!(
        sealers()[0].open::<Session>("_other", &sealed).is_err(),
        "another cookie name opened it"
    );
    let mut bytes = sealed.clone().into_bytes();
    let i = at as usize % bytes.len();
    bytes[i] ^= 1 << (bit % 8);
    if let Ok(flipped) = String::from_utf8(bytes)
        && let Ok(opened) = sealers()[0].open::<Session>(NAME, &flipped)
    {
        assert!(opened == session, "a flipped bit opened to another session");
    }
    let cut = &sealed[..i.min(sealed.len())];
    if let Ok(opened) = sealers()[0].open::<Session>(NAME, cut) {
        assert!(opened == session && cut.trim() == sealed, "a truncated value opened");
    }
}
