//! Reads flags, `OAUTH2_PROXY_*` environment variables and the TOML file into one set of raw
//! values with oauth2-proxy's precedence: flag > environment > file.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use super::options::{self, OPTIONS, Opt, Status};
use super::{ConfigError, cli, weak};

/// Options that exist only on the command line.
const CLI_ONLY: &[&str] = &[
    "config",
    "config_test",
    "strict",
    "version",
    "alpha_config",
    "convert_config_to_alpha",
];

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
    List(Vec<String>),
}

/// Where a value was set: the precedence (flag > environment > file) and the messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Env,
    Flag,
}

/// Raw values by TOML key, after precedence has been applied. Its `Debug` names the keys and
/// where each came from, never a value: secrets arrive here as plain text.
#[derive(Default)]
pub struct Values {
    map: HashMap<&'static str, (Value, Source)>,
    /// What loading found without refusing it (unknown environment variables); `Config`
    /// adds its own and reports them all at start-up.
    pub warnings: Vec<String>,
    /// The variables Azure workload identity's webhook (or a hand-written pod spec) sets.
    pub azure: AzureEnv,
}

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: std::collections::BTreeMap<_, _> = self.map.iter().map(|(k, (_, source))| (*k, source)).collect();
        f.debug_struct("Values")
            .field("keys", &keys)
            .field("warnings", &self.warnings)
            .field("azure", &self.azure)
            .finish()
    }
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
    fn set(&mut self, opt: &'static Opt, value: Value, source: Source) {
        self.map.insert(opt.key, (value, source));
    }

    pub fn is_set(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The options set anywhere, with their values.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.map.iter().map(|(k, (v, _))| (*k, v))
    }

    // The loader stores each value as its option's kind (options.rs), and every call site
    // asks for that kind (`accessors_ask_for_each_options_own_kind` in the tests checks the
    // sources). An option read as another kind is read as unset.

    pub fn str(&self, key: &str) -> String {
        match self.map.get(key) {
            Some((Value::Str(s), _)) => s.clone(),
            _ => options::by_key(key).map(|o| o.default.to_string()).unwrap_or_default(),
        }
    }

    /// The value, or `None` when unset or empty.
    pub fn opt_str(&self, key: &str) -> Option<String> {
        Some(self.str(key)).filter(|s| !s.is_empty())
    }

    pub fn bool(&self, key: &str) -> bool {
        match self.map.get(key) {
            Some((Value::Bool(b), _)) => *b,
            _ => options::by_key(key).is_some_and(|o| o.default == "true"),
        }
    }

    pub fn int(&self, key: &str) -> i64 {
        match self.map.get(key) {
            Some((Value::Int(i), _)) => *i,
            _ => options::by_key(key).and_then(|o| o.default.parse().ok()).unwrap_or(0),
        }
    }

    pub fn list(&self, key: &str) -> Vec<String> {
        match self.map.get(key) {
            Some((Value::List(l), _)) => l.clone(),
            _ => Vec::new(),
        }
    }

    /// Builds values directly, for tests of the typed layer.
    pub fn from_pairs(pairs: &[(&str, Value)]) -> Result<Self, ConfigError> {
        let mut v = Values::default();
        for (key, value) in pairs {
            let opt = options::by_key(key).ok_or_else(|| unknown(key, "test values"))?;
            v.set(opt, value.clone(), Source::File);
        }
        Ok(v)
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub struct Invocation {
    pub values: Values,
    pub config_test: bool,
    /// `--strict`: a start-up warning is fatal.
    pub strict: bool,
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
    let matches = cli::command().try_get_matches_from(args).map_err(LoadError::Cli)?;

    let mut flags = Values::default();
    for opt in OPTIONS.iter().filter(|o| o.key != "version") {
        if matches.value_source(opt.key) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let raw: Vec<String> = matches
            .get_many::<String>(opt.key)
            .map(|vals| vals.cloned().collect())
            .unwrap_or_default();
        let value = weak::from_flags(opt.kind, &raw).map_err(|e| ConfigError::Invalid {
            option: format!("--{}", opt.flag),
            message: e.to_string(),
        })?;
        flags.set(opt, value, Source::Flag);
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
            // viper treats an empty variable as unset, so the file or the default applies.
            Some(opt) if raw.is_empty() && (!CLI_ONLY.contains(&opt.key) || opt.key == "config") => {}
            Some(opt) if !CLI_ONLY.contains(&opt.key) || opt.key == "config" => {
                let value = weak::from_env(opt.kind, &raw).map_err(|e| ConfigError::Invalid {
                    option: name.clone(),
                    message: e.to_string(),
                })?;
                env_values.set(opt, value, Source::Env);
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
    let strict = values.bool("strict");
    Ok(Invocation {
        values,
        config_test,
        strict,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Cli(clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    // The message and the position only: toml's own rendering quotes the offending line,
    // which may hold a secret, and start-up errors also reach the pod's termination log.
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Toml {
        origin: origin.to_string(),
        message: match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {column}: {}", e.message().trim_end())
            }
            None => e.message().trim_end().to_string(),
        },
    })?;
    let mut values = Values::default();
    for (key, item) in table {
        let opt = options::by_key(&key)
            .filter(|o| !CLI_ONLY.contains(&o.key))
            .ok_or_else(|| unknown(&key, origin))?;
        let value = weak::from_toml(opt.kind, &item).map_err(|e| ConfigError::InvalidIn {
            option: key.clone(),
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        values.set(opt, value, Source::File);
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

/// Whether `value` is what oauth2-proxy uses when the option is not set at all.
pub(super) fn is_default(opt: &Opt, value: &Value) -> bool {
    match value {
        // `1s` and `1000ms` are the same duration.
        Value::Str(s) if opt.kind == options::Kind::Duration => {
            s == opt.default || super::duration::parse(s).ok() == super::duration::parse(opt.default).ok()
        }
        Value::Str(s) => s == opt.default,
        Value::Bool(b) => b.to_string() == opt.default,
        Value::Int(i) => i.to_string() == opt.default,
        Value::List(l) => l.is_empty() || l.join(",") == opt.default,
    }
}

/// Refuses planned and not-planned options set to anything but oauth2-proxy's default:
/// silently ignoring, say, `skip_auth_routes` would change who gets in.
fn check_status(values: &Values) -> Result<(), ConfigError> {
    for (key, (value, source)) in &values.map {
        let opt = options::by_key(key).expect("values only hold known keys");
        let is_default = is_default(opt, value);
        let where_ = match source {
            Source::File => "the config file",
            Source::Env => "the environment",
            Source::Flag => "the command line",
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
