//! Every kind × every source, accepted and refused, against what oauth2-proxy (viper,
//! mapstructure, pflag) does with the same input.

use super::*;
use crate::config::{Config, load};

fn toml_value(text: &str) -> toml::Value {
    let table: toml::Table = toml::from_str(&format!("v = {text}")).unwrap();
    table["v"].clone()
}

fn b(v: bool) -> Value {
    Value::Bool(v)
}
fn i(v: i64) -> Value {
    Value::Int(v)
}
fn s(v: &str) -> Value {
    Value::Str(v.into())
}
fn l(v: &[&str]) -> Value {
    Value::List(v.iter().map(|x| x.to_string()).collect())
}

/// (kind, TOML literal, expected) — `None` means oauth2-proxy refuses it too, or (durations
/// given as bare numbers) sidekey refuses what it would misread.
type TomlCase = (Kind, &'static str, Option<Value>);

#[test]
fn toml_values_convert_as_mapstructure_weak_decoding_does() {
    let cases: &[TomlCase] = &[
        (Kind::Bool, "true", Some(b(true))),
        (Kind::Bool, r#""true""#, Some(b(true))),
        (Kind::Bool, r#""T""#, Some(b(true))),
        (Kind::Bool, r#""1""#, Some(b(true))),
        (Kind::Bool, r#""False""#, Some(b(false))),
        (Kind::Bool, r#""""#, Some(b(false))),
        (Kind::Bool, "1", Some(b(true))),
        (Kind::Bool, "-3", Some(b(true))),
        (Kind::Bool, "0", Some(b(false))),
        (Kind::Bool, "0.5", Some(b(true))),
        (Kind::Bool, r#""yes""#, None),
        (Kind::Bool, r#""on""#, None),
        (Kind::Bool, r#"" true""#, None),
        (Kind::Bool, "[true]", None),
        (Kind::Bool, "1979-05-27", None),
        (Kind::Int, "30", Some(i(30))),
        (Kind::Int, r#""30""#, Some(i(30))),
        (Kind::Int, r#""-30""#, Some(i(-30))),
        (Kind::Int, r#""0x1e""#, Some(i(30))),
        (Kind::Int, r#""036""#, Some(i(30))),
        (Kind::Int, r#""0o36""#, Some(i(30))),
        (Kind::Int, r#""0b11110""#, Some(i(30))),
        (Kind::Int, r#""1_000""#, Some(i(1000))),
        (Kind::Int, r#""""#, Some(i(0))),
        (Kind::Int, "30.9", Some(i(30))),
        (Kind::Int, "-1.5", Some(i(-1))),
        (Kind::Int, "true", Some(i(1))),
        (Kind::Int, r#""30s""#, None),
        (Kind::Int, r#"" 30""#, None),
        (Kind::Int, r#""1e3""#, None),
        (Kind::Int, r#""08""#, None),
        (Kind::Int, r#""_1""#, None),
        (Kind::Int, r#""1__0""#, None),
        (Kind::Int, r#""9223372036854775808""#, None),
        (Kind::Int, "1e300", None),
        (Kind::Int, "nan", None),
        (Kind::Int, "[30]", None),
        (Kind::Duration, r#""168h""#, Some(s("168h"))),
        (Kind::Duration, r#""1h30m""#, Some(s("1h30m"))),
        (Kind::Duration, r#""300ms""#, Some(s("300ms"))),
        (Kind::Duration, r#""0""#, Some(s("0"))),
        (Kind::Duration, "0", Some(s("0"))),
        (Kind::Duration, "0.0", Some(s("0"))),
        (Kind::Duration, "604800", None),
        (Kind::Duration, "1.5", None),
        (Kind::Duration, "true", None),
        (Kind::Duration, r#""""#, None),
        (Kind::Duration, r#""7d""#, None),
        (Kind::Duration, r#""10""#, None),
        (Kind::Duration, r#""-1h""#, None),
        (Kind::Str, r#""app""#, Some(s("app"))),
        (Kind::Str, "12345", Some(s("12345"))),
        (Kind::Str, "1.5", Some(s("1.5"))),
        (Kind::Str, "1e21", Some(s("1000000000000000000000"))),
        (Kind::Str, "true", Some(s("1"))),
        (Kind::Str, "false", Some(s("0"))),
        (Kind::Str, r#"["a"]"#, None),
        (Kind::Str, "{ a = 1 }", None),
        (Kind::Str, "1979-05-27T07:32:00Z", None),
        (Kind::List, r#"["a.com", "b.com"]"#, Some(l(&["a.com", "b.com"]))),
        (Kind::List, r#""a.com,b.com""#, Some(l(&["a.com", "b.com"]))),
        (Kind::List, r#""a.com, b.com""#, Some(l(&["a.com", "b.com"]))),
        (Kind::List, r#""a.com""#, Some(l(&["a.com"]))),
        (Kind::List, r#""""#, Some(l(&[]))),
        (Kind::List, "[]", Some(l(&[]))),
        (Kind::List, "5", Some(l(&["5"]))),
        (Kind::List, "true", Some(l(&["1"]))),
        (Kind::List, r#"[1, true, "x", 2.5]"#, Some(l(&["1", "1", "x", "2.5"]))),
        (Kind::List, "[[1]]", None),
        (Kind::List, "[{ a = 1 }]", None),
        (Kind::List, "{ a = 1 }", None),
    ];
    for (kind, text, want) in cases {
        let got = from_toml(*kind, &toml_value(text));
        match want {
            Some(v) => assert_eq!(got.as_ref(), Ok(v), "{kind:?} {text}"),
            None => assert!(got.is_err(), "{kind:?} {text} should be refused, got {got:?}"),
        }
    }
}

#[test]
fn environment_text_is_read_like_a_toml_string() {
    let cases: &[(Kind, &str, Option<Value>)] = &[
        (Kind::Bool, "true", Some(b(true))),
        (Kind::Bool, "1", Some(b(true))),
        (Kind::Bool, "F", Some(b(false))),
        (Kind::Bool, "yes", None),
        (Kind::Bool, "true ", None),
        (Kind::Int, "202", Some(i(202))),
        (Kind::Int, "0xca", Some(i(202))),
        (Kind::Int, "202.0", None),
        (Kind::Duration, "12h", Some(s("12h"))),
        (Kind::Duration, "3600", None),
        (Kind::Str, " spaced ", Some(s(" spaced "))),
        // The StringToSlice(",") hook; viper never splits environment values on spaces here.
        (Kind::List, "a.com,b.com", Some(l(&["a.com", "b.com"]))),
        (Kind::List, "a.com b.com", Some(l(&["a.com b.com"]))),
        (Kind::List, "\"a,b\"", Some(l(&["\"a", "b\""]))),
    ];
    for (kind, raw, want) in cases {
        let got = from_env(*kind, raw);
        match want {
            Some(v) => assert_eq!(got.as_ref(), Ok(v), "{kind:?} {raw:?}"),
            None => assert!(got.is_err(), "{kind:?} {raw:?} should be refused, got {got:?}"),
        }
    }
}

#[test]
fn flags_parse_as_pflag_does() {
    let cases: &[(Kind, &[&str], Option<Value>)] = &[
        (Kind::Bool, &["true"], Some(b(true))),
        (Kind::Bool, &["t"], Some(b(true))),
        (Kind::Bool, &["0"], Some(b(false))),
        (Kind::Bool, &["true", "false"], Some(b(false))),
        (Kind::Bool, &[""], None),
        (Kind::Bool, &["yes"], None),
        (Kind::Int, &["202"], Some(i(202))),
        (Kind::Int, &["0x10"], Some(i(16))),
        (Kind::Int, &["-1"], Some(i(-1))),
        (Kind::Int, &[""], None),
        (Kind::Int, &["2e2"], None),
        (Kind::Duration, &["1h"], Some(s("1h"))),
        (Kind::Duration, &["0"], Some(s("0"))),
        (Kind::Duration, &[""], None),
        (Kind::Duration, &["60"], None),
        (Kind::Str, &["a", "b"], Some(s("b"))),
        (Kind::Str, &[""], Some(s(""))),
        (Kind::List, &["a,b", "c"], Some(l(&["a", "b", "c"]))),
        (Kind::List, &["\"^/a{1,2}$\",^/b"], Some(l(&["^/a{1,2}$", "^/b"]))),
        (Kind::List, &["\"say \"\"hi\"\"\""], Some(l(&["say \"hi\""]))),
        (Kind::List, &["a,"], Some(l(&["a"]))),
        (Kind::List, &[""], Some(l(&[]))),
        (Kind::List, &["a\"b"], None),
        (Kind::List, &["\"a"], None),
        (Kind::List, &["\"a\"b"], None),
    ];
    for (kind, raw, want) in cases {
        let raw: Vec<String> = raw.iter().map(|r| r.to_string()).collect();
        let got = from_flags(*kind, &raw);
        match want {
            Some(v) => assert_eq!(got.as_ref(), Ok(v), "{kind:?} {raw:?}"),
            None => assert!(got.is_err(), "{kind:?} {raw:?} should be refused, got {got:?}"),
        }
    }
}

#[test]
fn go_integer_syntax_edges() {
    assert_eq!(go_parse_int("0"), Ok(0));
    assert_eq!(go_parse_int("+7"), Ok(7));
    assert_eq!(go_parse_int("0X1F"), Ok(31));
    assert_eq!(go_parse_int("0x_1f"), Ok(31));
    assert_eq!(go_parse_int("0_7"), Ok(7));
    assert_eq!(go_parse_int("-9223372036854775808"), Ok(i64::MIN));
    assert_eq!(go_parse_int("9223372036854775807"), Ok(i64::MAX));
    for bad in ["", "-", "0x", "1_", "0b2", "١٢"] {
        assert!(matches!(go_parse_int(bad), Err(WeakError::NotInt(_))), "{bad}");
    }
    assert!(matches!(go_parse_int("99999999999999999999"), Err(WeakError::IntRange(_))));
}

const SECRET: &str = "kWLVCNcSNRuhD1mwXR8ExoBRH8hjQCxDdQz9IMxbG5E=";

/// The same option set through a file, the environment and a flag.
enum Source {
    Toml(&'static str),
    Env(&'static str),
    Flag(&'static str),
}

fn load_with(key: &str, src: &Source) -> Result<Config, String> {
    let opt = crate::config::options::by_key(key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.cfg");
    let mut text = format!(
        "provider = \"oidc\"\noidc_issuer_url = \"https://idp.example.com\"\nclient_secret = \"s\"\ncookie_secret = \"{SECRET}\"\n"
    );
    if key != "client_id" {
        text.push_str("client_id = \"app\"\n");
    }
    if key != "email_domains" {
        text.push_str("email_domains = [\"*\"]\n");
    }
    let mut args = vec!["sidekey-proxy".to_string(), format!("--config={}", file.display())];
    let mut env = Vec::new();
    match src {
        Source::Toml(v) => text.push_str(&format!("{key} = {v}\n")),
        Source::Env(v) => env.push((opt.env_name(), v.to_string())),
        Source::Flag(v) => args.push(format!("--{}={v}", opt.flag)),
    }
    std::fs::write(&file, text).unwrap();
    let inv = load(args, env).map_err(|e| e.to_string())?;
    Config::from_values(&inv.values).map_err(|e| e.to_string())
}

#[test]
fn every_kind_loads_from_every_source_with_the_same_result() {
    use Source::*;
    let sources = |toml, text| [Toml(toml), Env(text), Flag(text)];
    for src in sources("\"true\"", "true")
        .iter()
        .chain(&sources("1", "1"))
        .chain(&[Toml("\"T\""), Env("T"), Flag("T")])
    {
        assert!(load_with("skip_provider_button", src).unwrap().skip_provider_button);
    }
    for src in sources("\"200\"", "200").iter().chain(&sources("200", "0xc8")) {
        assert_eq!(load_with("auth_success_status", src).unwrap().auth_success_status, 200);
    }
    for src in sources("\"12h\"", "12h").iter().chain(&sources("\"720m\"", "720m")) {
        assert_eq!(load_with("cookie_expire", src).unwrap().cookie.expire.as_secs(), 12 * 3600);
    }
    for src in sources("12345", "12345").iter().chain(&sources("\"12345\"", "12345")) {
        assert_eq!(load_with("client_id", src).unwrap().provider.client_id, "12345");
    }
    for src in sources("\"a.com,b.com\"", "a.com,b.com")
        .iter()
        .chain(&sources("[\"a.com\", \"b.com\"]", "a.com,b.com"))
    {
        assert_eq!(load_with("email_domains", src).unwrap().authz.email_domains, ["a.com", "b.com"]);
    }
}

#[test]
fn refusals_name_the_option_its_source_and_the_accepted_spellings() {
    use Source::*;
    let cases: &[(&str, Source, &str)] = &[
        ("skip_provider_button", Toml("\"yes\""), "option `skip_provider_button` in "),
        (
            "skip_provider_button",
            Env("yes"),
            "option `OAUTH2_PROXY_SKIP_PROVIDER_BUTTON`: `yes` is not a boolean; write true or false (also accepted, as Go reads them: 1, t, T",
        ),
        (
            "skip_provider_button",
            Flag("yes"),
            "option `--skip-provider-button`: `yes` is not a boolean",
        ),
        (
            "auth_success_status",
            Toml("\"two hundred\""),
            "`two hundred` is not a whole number",
        ),
        (
            "auth_success_status",
            Env("202 "),
            "option `OAUTH2_PROXY_AUTH_SUCCESS_STATUS`: `202 ` is not a whole number",
        ),
        (
            "auth_success_status",
            Flag("abc"),
            "option `--auth-success-status`: `abc` is not a whole number",
        ),
        (
            "cookie_expire",
            Toml("604800"),
            "604800 has no unit: oauth2-proxy would read it as 604800 nanoseconds; write the unit, e.g. \"604800s\"",
        ),
        (
            "cookie_expire",
            Env("7d"),
            "option `OAUTH2_PROXY_COOKIE_EXPIRE`: `7d` is not a duration (unknown unit `d`",
        ),
        (
            "cookie_expire",
            Flag("10"),
            "option `--cookie-expire`: `10` is not a duration (missing unit",
        ),
        ("client_id", Toml("[\"app\"]"), "option `client_id` in "),
        (
            "email_domains",
            Toml("[[\"a.com\"]]"),
            "expected an array of strings, found an array",
        ),
        (
            "email_domains",
            Flag("a\"b"),
            "option `--email-domain`: `a\"b` is not a comma-separated list",
        ),
    ];
    for (key, src, want) in cases {
        let err = load_with(key, src).unwrap_err();
        assert!(err.contains(want), "{key}: {err}");
    }
    let err = load_with("skip_provider_button", &Toml("\"yes\"")).unwrap_err();
    assert!(err.ends_with("p.cfg: `yes` is not a boolean; write true or false (also accepted, as Go reads them: 1, t, T, TRUE, True, 0, f, F, FALSE, False)"), "{err}");
}

#[test]
fn an_empty_environment_variable_counts_as_unset() {
    // viper's AllowEmptyEnv is off: the file's value stays.
    let cfg = load_with("client_id", &Source::Env("")).unwrap_err();
    assert!(cfg.contains("option `client_id`: is required"), "{cfg}");
    let cfg = load_with("skip_provider_button", &Source::Env("")).unwrap();
    assert!(!cfg.skip_provider_button);
}
