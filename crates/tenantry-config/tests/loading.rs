use std::collections::HashMap;
use std::path::PathBuf;

use tenantry_config::{load, ConfigError, ExposeSecret, LoadOptions, LogFormat};

/// Options that read nothing from this process: an empty config folder unless given.
fn opts(env: &str, vars: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        env: Some(env.into()),
        config_dir: Some(PathBuf::from("/nonexistent-tenantry-config")),
        extra_file: None,
        vars: Some(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

fn invalid_key(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected an invalid key, got {other}"),
    }
}

const PROD_SECRET: &str = "a-real-production-secret-of-at-least-32-bytes";
const PROD_KEY: &str = "cHJvZHVjdGlvbi1rZXktMzItYnl0ZXMtbG9uZy0tLS0=";

#[test]
fn defaults_then_environment_file() {
    let s = load(&opts("dev", &[])).unwrap();
    assert_eq!(s.env, "dev");
    assert_eq!(s.http.bind.to_string(), "127.0.0.1:8080");
    assert!(s.catalog.url.is_none());
    assert!(s.auth.hs256_secret.is_some() && s.master_key().is_some());
    assert_eq!(s.log.format, LogFormat::Text);
    assert_eq!(s.plans().unwrap().len(), 3);
}

#[test]
fn files_then_extra_file_then_variables() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dev.toml"),
        "[http]\nbind = \"127.0.0.1:9001\"\nmax_body_bytes = 5000\n[auth]\nissuer = \"from-env-file\"\nhs256_secret = \"dev-only-insecure-hs256-secret-change-me-0000\"\n",
    )
    .unwrap();
    let extra = dir.path().join("extra.toml");
    std::fs::write(
        &extra,
        "[http]\nbind = \"127.0.0.1:9002\"\n[plans.free]\ntasks_per_month = 20\n",
    )
    .unwrap();

    let mut o = opts("dev", &[("TENANTRY__AUTH__ISSUER", "from-variable")]);
    o.config_dir = Some(dir.path().into());
    o.extra_file = Some(extra.clone());
    let s = load(&o).unwrap();
    assert_eq!(
        s.http.bind.port(),
        9002,
        "--config wins over the environment file"
    );
    assert_eq!(
        s.http.max_body_bytes, 5000,
        "the environment file wins over defaults"
    );
    assert_eq!(
        s.auth.issuer, "from-variable",
        "variables win over every file"
    );
    assert_eq!(s.plans().unwrap()[0].tasks_per_month, Some(20));

    o.vars = Some([("TENANTRY__HTTP__BIND".into(), "127.0.0.1:9003".into())].into());
    assert_eq!(load(&o).unwrap().http.bind.port(), 9003);

    o.extra_file = Some(dir.path().join("missing.toml"));
    assert!(matches!(load(&o), Err(ConfigError::MissingFile { .. })));
}

#[test]
fn secrets_never_print() {
    let s = load(&opts(
        "dev",
        &[(
            "TENANTRY__CATALOG__URL",
            "postgres://u:hunter2-secret@db.example:5432/cat",
        )],
    ))
    .unwrap();
    let printed = format!("{s:?} {:?}", s.master_key());
    for secret in ["hunter2-secret", "dev-only-insecure", "ZGV2LW9ub"] {
        assert!(!printed.contains(secret), "{secret} printed in {printed}");
    }
    assert!(printed.contains("REDACTED"));
}

#[test]
fn secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hs");
    std::fs::write(&path, format!("{PROD_SECRET}\n")).unwrap();
    let s = load(&opts(
        "test",
        &[
            ("TENANTRY__AUTH__HS256_SECRET_FILE", path.to_str().unwrap()),
            // The test file sets the secret directly; clear that layer with the variable above.
        ],
    ));
    // Both set (test.toml and the file): refused, naming the key.
    assert_eq!(invalid_key(s.unwrap_err()), "auth.hs256_secret");

    let s = load(&opts(
        "staging",
        &[
            ("TENANTRY__CATALOG__URL", "postgres://u:p@db:5432/cat"),
            ("TENANTRY__AUTH__HS256_SECRET_FILE", path.to_str().unwrap()),
            ("TENANTRY__SECRETS__MASTER_KEY", PROD_KEY),
        ],
    ))
    .unwrap();
    assert_eq!(s.auth.hs256_secret.unwrap().expose_secret(), PROD_SECRET);

    let e = load(&opts(
        "staging",
        &[("TENANTRY__AUTH__HS256_SECRET_FILE", "/nonexistent/secret")],
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "auth.hs256_secret_file");
}

#[test]
fn invalid_values_name_their_key() {
    for (var, value, key) in [
        ("TENANTRY__CATALOG__URL", "mysql://x@y/z", "catalog.url"),
        ("TENANTRY__CATALOG__URL", "not a url", "catalog.url"),
        (
            "TENANTRY__CATALOG__URL",
            "postgres://u:p@/cat",
            "catalog.url",
        ),
        (
            "TENANTRY__CATALOG__URL",
            "postgres://u:p@a:1,:2/cat",
            "catalog.url",
        ),
        (
            "TENANTRY__CATALOG__URL",
            "postgres://u:p@a:99999/cat",
            "catalog.url",
        ),
        ("TENANTRY__AUTH__HS256_SECRET", "short", "auth.hs256_secret"),
        (
            "TENANTRY__SECRETS__MASTER_KEY",
            "c2hvcnQ=",
            "secrets.master_key",
        ),
        ("TENANTRY__SECRETS__MASTER_KEY", "!!!", "secrets.master_key"),
        ("TENANTRY__AUTH__ISSUER", " ", "auth.issuer"),
        (
            "TENANTRY__PLANS__FREE__POOL_SIZE",
            "0",
            "plans.free.pool_size",
        ),
        (
            "TENANTRY__PLANS__FREE__TASKS_PER_MONTH",
            "-5",
            "plans.free.tasks_per_month",
        ),
        (
            "TENANTRY__PLANS__TEAM__POOL_SIZE",
            "3",
            "plans.team.tasks_per_month",
        ),
        ("TENANTRY__PLANS__PRO__PRIORITY", "10", "plans.pro.priority"),
        (
            "TENANTRY__ROUTER__PRIORITY_MAX_DEFER_MS",
            "2000",
            "router.priority_max_defer_ms",
        ),
    ] {
        let e = load(&opts("dev", &[(var, value)])).unwrap_err();
        let message = e.to_string();
        assert_eq!(invalid_key(e), key, "{var}={value}: {message}");
        assert!(
            !message.contains("mysql://x@y"),
            "a URL must never be echoed: {message}"
        );
    }
    let e = load(&opts("dev", &[("TENANTRY__HTTP__BIND", "nowhere")])).unwrap_err();
    assert!(e.to_string().contains("http.bind"), "{e}");
    assert!(matches!(
        load(&opts("Prod!", &[])),
        Err(ConfigError::BadEnvironment(_))
    ));
}

#[test]
fn production_refuses_development_secrets() {
    let url = ("TENANTRY__CATALOG__URL", "postgres://u:p@db:5432/cat");
    let key = ("TENANTRY__SECRETS__MASTER_KEY", PROD_KEY);
    let secret = ("TENANTRY__AUTH__HS256_SECRET", PROD_SECRET);
    assert!(load(&opts("production", &[url, key, secret])).is_ok());

    let e = load(&opts("production", &[key, secret])).unwrap_err();
    assert_eq!(invalid_key(e), "catalog.url");
    let e = load(&opts("production", &[url, secret])).unwrap_err();
    assert_eq!(invalid_key(e), "secrets.master_key");
    let e = load(&opts("production", &[url, key])).unwrap_err();
    assert_eq!(invalid_key(e), "auth.hs256_secret");

    for (var, dev_value) in [
        (
            "TENANTRY__AUTH__HS256_SECRET",
            "dev-only-insecure-hs256-secret-change-me-0000",
        ),
        (
            "TENANTRY__SECRETS__MASTER_KEY",
            "dGVzdC1vbmx5LWluc2VjdXJlLW1hc3Rlci1rZXktMDA=",
        ),
    ] {
        let mut vars = vec![url, key, secret];
        vars.retain(|(k, _)| *k != var);
        vars.push((var, dev_value));
        let e = load(&opts("production", &vars)).unwrap_err();
        assert!(e.to_string().contains("public development secret"), "{e}");
    }
    // dev accepts its own secrets.
    assert!(load(&opts("dev", &[])).is_ok());
}

#[test]
fn the_admin_trust_root_is_its_own() {
    // The test environment has one, apart from the tenants'.
    let s = load(&opts("test", &[])).unwrap();
    assert!(s.auth.admin.is_configured());
    assert_ne!(s.auth.admin.audience, s.auth.audience);
    // The same secret for both roots, or the same audience, is refused.
    let same_secret = load(&opts(
        "test",
        &[(
            "TENANTRY__AUTH__ADMIN__HS256_SECRET",
            "test-only-insecure-hs256-secret-change-me-00",
        )],
    ))
    .unwrap_err();
    assert_eq!(invalid_key(same_secret), "auth.admin.hs256_secret");
    let same_audience = load(&opts(
        "test",
        &[("TENANTRY__AUTH__ADMIN__AUDIENCE", "tenantry-api")],
    ))
    .unwrap_err();
    assert_eq!(invalid_key(same_audience), "auth.admin.audience");
    // Production refuses the development admin secret.
    let e = load(&opts(
        "production",
        &[
            ("TENANTRY__CATALOG__URL", "postgres://u:p@db/tenantry"),
            ("TENANTRY__AUTH__HS256_SECRET", PROD_SECRET),
            ("TENANTRY__SECRETS__MASTER_KEY", PROD_KEY),
            (
                "TENANTRY__AUTH__ADMIN__HS256_SECRET",
                "dev-only-insecure-admin-hs256-secret-change-me",
            ),
        ],
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "auth.admin.hs256_secret");
}

#[test]
fn a_catalog_url_may_name_a_primary_and_its_standbys() {
    let key = ("TENANTRY__SECRETS__MASTER_KEY", PROD_KEY);
    let secret = ("TENANTRY__AUTH__HS256_SECRET", PROD_SECRET);
    for url in [
        "postgres://u:p@db1:5432,db2:5433/cat?target_session_attrs=read-write",
        "postgresql://u@db1,db2,[::1]:6432/cat",
    ] {
        let url = ("TENANTRY__CATALOG__URL", url);
        assert!(
            load(&opts("production", &[url, key, secret])).is_ok(),
            "{url:?}"
        );
    }
}
