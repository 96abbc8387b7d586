//! Reads flags, `OAUTH2_PROXY_*` environment variables and the TOML file into one set of raw
//! values with oauth2-proxy's precedence: flag > environment > file.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

use super::ConfigError;
use super::options::{self, Kind, OPTIONS, Opt, Status};

/// Options that exist only on the command line.
const CLI_ONLY: &[&str] = &["config", "config_test", "version", "alpha_config", "convert_config_to_alpha"];

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
    List(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    File,
    Env,
    Flag,
}

/// Raw values by TOML key, after precedence has been applied.
#[derive(Debug, Default)]
pub struct Values {
    map: HashMap<&'static str, (Value, Origin)>,
    /// Non-fatal findings (unknown environment variables), logged once at start-up.
    pub warnings: Vec<String>,
    /// The variables Azure workload identity's webhook (or a hand-written pod spec) sets.
    pub azure: AzureEnv,
}

/// `AZURE_*` environment variables, read as the Azure SDKs read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AzureEnv {
    pub federated_token_file: Option<String>,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub authority_host: Option<String>,
}

impl AzureEnv {
    fn take(&mut self, name: &str, value: &str) -> bool {
        let slot = match name {
            "AZURE_FEDERATED_TOKEN_FILE" => &mut self.federated_token_file,
            "AZURE_CLIENT_ID" => &mut self.client_id,
            "AZURE_TENANT_ID" => &mut self.tenant_id,
            "AZURE_AUTHORITY_HOST" => &mut self.authority_host,
            _ => return false,
        };
        *slot = Some(value.trim().to_string()).filter(|v| !v.is_empty());
        true
    }
}

impl Values {
    fn set(&mut self, opt: &'static Opt, value: Value, origin: Origin) {
        self.map.insert(opt.key, (value, origin));
    }

    pub fn is_set(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn str(&self, key: &str) -> String {
        match self.map.get(key) {
            Some((Value::Str(s), _)) => s.clone(),
            Some(_) => unreachable!("option {key} is not a string"),
            None => options::by_key(key).map(|o| o.default.to_string()).unwrap_or_default(),
        }
    }

    /// The value, or `None` when unset or empty.
    pub fn opt_str(&self, key: &str) -> Option<String> {
        Some(self.str(key)).filter(|s| !s.is_empty())
    }

    pub fn bool(&self, key: &str) -> bool {
        match self.map.get(key) {
            Some((Value::Bool(b), _)) => *b,
            Some(_) => unreachable!("option {key} is not a bool"),
            None => options::by_key(key).is_some_and(|o| o.default == "true"),
        }
    }

    pub fn int(&self, key: &str) -> i64 {
        match self.map.get(key) {
            Some((Value::Int(i), _)) => *i,
            Some(_) => unreachable!("option {key} is not an integer"),
            None => options::by_key(key).and_then(|o| o.default.parse().ok()).unwrap_or(0),
        }
    }

    pub fn list(&self, key: &str) -> Vec<String> {
        match self.map.get(key) {
            Some((Value::List(l), _)) => l.clone(),
            Some(_) => unreachable!("option {key} is not a list"),
            None => Vec::new(),
        }
    }

    /// Builds values directly, for tests of the typed layer.
    pub fn from_pairs(pairs: &[(&str, Value)]) -> Result<Self, ConfigError> {
        let mut v = Values::default();
        for (key, value) in pairs {
            let opt = options::by_key(key).ok_or_else(|| unknown(key, "test values"))?;
            v.set(opt, value.clone(), Origin::File);
        }
        Ok(v)
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub struct Invocation {
    pub values: Values,
    pub config_test: bool,
}

/// Parses the command line, the environment and the config file it names.
/// `Err(LoadError::Cli)` carries clap's own error, which also covers `--help` and `--version`.
pub fn load<I, T, E>(args: I, env: E) -> Result<Invocation, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
    E: IntoIterator<Item = (String, String)>,
{
    let invocation = parse(args, env)?;
    check_status(&invocation.values)?;
    Ok(invocation)
}

/// Parses like [`load`] but accepts options sidekey-proxy does not implement yet, so that
/// tooling (the controller's render tests) can check names and value syntax on their own.
pub fn parse<I, T, E>(args: I, env: E) -> Result<Invocation, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
    E: IntoIterator<Item = (String, String)>,
{
    let matches = command().try_get_matches_from(args).map_err(LoadError::Cli)?;

    let mut flags = Values::default();
    for opt in OPTIONS.iter().filter(|o| o.key != "version") {
        if matches.value_source(opt.key) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let raw: Vec<String> = matches
            .get_many::<String>(opt.key)
            .map(|vals| vals.cloned().collect())
            .unwrap_or_default();
        let value = parse_text(opt, &raw, &format!("--{}", opt.flag))?;
        flags.set(opt, value, Origin::Flag);
    }

    let mut env_values = Values::default();
    let mut azure = AzureEnv::default();
    for (name, raw) in env {
        if azure.take(&name, &raw) {
            continue;
        }
        let Some(rest) = name.strip_prefix("OAUTH2_PROXY_") else { continue };
        let key = rest.to_ascii_lowercase();
        match options::by_key(&key) {
            Some(opt) if !CLI_ONLY.contains(&opt.key) || opt.key == "config" => {
                let value = parse_text(opt, std::slice::from_ref(&raw), &name)?;
                env_values.set(opt, value, Origin::Env);
            }
            _ => env_values.warnings.push(format!(
                "ignoring unknown environment variable {name}{}",
                suggestion(options::closest_key(&key).map(|k| format!("OAUTH2_PROXY_{}", k.to_ascii_uppercase())))
            )),
        }
    }

    let config_path = match (flags.opt_str("config"), env_values.opt_str("config")) {
        (Some(p), _) | (None, Some(p)) => Some(PathBuf::from(p)),
        _ => None,
    };
    let mut values = match &config_path {
        Some(path) => read_toml_file(path)?,
        None => Values::default(),
    };
    values.warnings.append(&mut env_values.warnings);
    values.map.extend(env_values.map);
    values.map.extend(flags.map);
    values.azure = azure;

    let config_test = values.bool("config_test");
    Ok(Invocation { values, config_test })
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Cli(clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn command() -> Command {
    let mut cmd = Command::new("sidekey-proxy")
        .about("OIDC-authenticating reverse proxy and forward-auth endpoint; reads oauth2-proxy's flags, TOML keys and OAUTH2_PROXY_* variables.")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_version_flag(true)
        // Go's pflag: a repeated single-valued flag takes the last value.
        .args_override_self(true)
        .arg(Arg::new("print_version").long("version").action(ArgAction::Version).help("Print the version and exit."));
    for opt in OPTIONS.iter().filter(|o| o.key != "version") {
        let mut arg = Arg::new(opt.key).long(opt.flag).help(opt.help).value_name(match opt.kind {
            Kind::Str => "STRING",
            Kind::Bool => "BOOL",
            Kind::Int => "INT",
            Kind::List => "LIST",
        });
        arg = match opt.kind {
            // Go's pflag: `--flag` means true, `--flag=false` turns it off.
            Kind::Bool => arg.num_args(0..=1).require_equals(true).default_missing_value("true"),
            Kind::List => arg.action(ArgAction::Append).num_args(1),
            _ => arg.num_args(1),
        };
        if !matches!(opt.status, Status::Supported) {
            arg = arg.hide(true);
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

/// Parses text from a flag or an environment variable.
fn parse_text(opt: &'static Opt, raw: &[String], origin: &str) -> Result<Value, ConfigError> {
    let last = raw.last().cloned().unwrap_or_default();
    Ok(match opt.kind {
        Kind::Str => Value::Str(last),
        Kind::Bool => Value::Bool(parse_bool(&last).ok_or_else(|| ConfigError::Invalid {
            option: origin.to_string(),
            message: format!("`{last}` is not a boolean; use true or false"),
        })?),
        Kind::Int => Value::Int(last.trim().parse().map_err(|_| ConfigError::Invalid {
            option: origin.to_string(),
            message: format!("`{last}` is not a whole number"),
        })?),
        Kind::List => Value::List(
            raw.iter()
                .flat_map(|r| r.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ),
    })
}

/// Go's strconv.ParseBool.
fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn read_toml_file(path: &std::path::Path) -> Result<Values, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, &path.display().to_string())
}

/// Parses an oauth2-proxy TOML config. Unknown keys are errors that name the closest key.
pub fn parse_toml(text: &str, origin: &str) -> Result<Values, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Toml {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    let mut values = Values::default();
    for (key, item) in table {
        let opt = options::by_key(&key)
            .filter(|o| !CLI_ONLY.contains(&o.key))
            .ok_or_else(|| unknown(&key, origin))?;
        let wrong = |expected: &str| ConfigError::Invalid {
            option: key.clone(),
            message: format!("expected {expected} in {origin}, found {}", item.type_str()),
        };
        let value = match (opt.kind, &item) {
            (Kind::Str, toml::Value::String(s)) => Value::Str(s.clone()),
            (Kind::Bool, toml::Value::Boolean(b)) => Value::Bool(*b),
            (Kind::Int, toml::Value::Integer(i)) => Value::Int(*i),
            (Kind::List, toml::Value::String(s)) => Value::List(vec![s.clone()]),
            (Kind::List, toml::Value::Array(items)) => Value::List(
                items
                    .iter()
                    .map(|i| i.as_str().map(String::from).ok_or_else(|| wrong("an array of strings")))
                    .collect::<Result<_, _>>()?,
            ),
            (Kind::Str, _) => return Err(wrong("a string")),
            (Kind::Bool, _) => return Err(wrong("true or false")),
            (Kind::Int, _) => return Err(wrong("an integer")),
            (Kind::List, _) => return Err(wrong("an array of strings")),
        };
        values.set(opt, value, Origin::File);
    }
    Ok(values)
}

fn unknown(key: &str, origin: &str) -> ConfigError {
    ConfigError::Unknown {
        key: key.to_string(),
        origin: origin.to_string(),
        suggestion: suggestion(options::closest_key(key).map(String::from)),
    }
}

fn suggestion(key: Option<String>) -> String {
    key.map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default()
}

/// Refuses planned and not-planned options set to anything but oauth2-proxy's default:
/// silently ignoring, say, `skip_auth_routes` would change who gets in.
fn check_status(values: &Values) -> Result<(), ConfigError> {
    for (key, (value, origin)) in &values.map {
        let opt = options::by_key(key).expect("values only hold known keys");
        let is_default = match value {
            Value::Str(s) => s == opt.default,
            Value::Bool(b) => b.to_string() == opt.default,
            Value::Int(i) => i.to_string() == opt.default,
            Value::List(l) => l.is_empty() || l.join(",") == opt.default,
        };
        let where_ = match origin {
            Origin::File => "the config file",
            Origin::Env => "the environment",
            Origin::Flag => "the command line",
        };
        match opt.status {
            Status::Planned if !is_default => {
                return Err(ConfigError::Invalid {
                    option: opt.key.to_string(),
                    message: format!(
                        "set in {where_}, but sidekey-proxy does not support it yet (planned; see docs/configuration.md). Remove it, or keep oauth2-proxy for now"
                    ),
                });
            }
            Status::NotPlanned(why) if !is_default => {
                return Err(ConfigError::Invalid {
                    option: opt.key.to_string(),
                    message: format!("set in {where_}, but sidekey-proxy does not support it: {why}"),
                });
            }
            _ => {}
        }
    }
    Ok(())
}
