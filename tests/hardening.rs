//! A hostile tenant, a stale token or one heavy query never reaches past its walls:
//! attacks over real HTTP against `tenantry serve` processes and real clusters.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{admin_token, token, Deployment};

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// A token signed by hand with the tenants' secret.
fn signed(claims: Value) -> String {
    let s = support::test_settings();
    let secret = s.auth.hs256_secret.unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(
            secrecy::ExposeSecret::expose_secret(&secret).as_bytes(),
        ),
    )
    .unwrap()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_token_reaches_one_tenant_incarnation_never_a_later_one() {
    let d = Deployment::new().await;
    ok(d.run(&["tenant", "create", "acme", "--plan", "pro"]));
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let tasks = format!("{}/v1/tasks", r.base);

    // `token issue` binds the token to the tenant's id; a slug-only token to its iat.
    let by_id = ok(d.run(&["token", "issue", "--tenant", "acme", "--sub", "u1"]));
    let by_iat = token("acme", None);
    for t in [&by_id, &by_iat] {
        let resp = http
            .post(&tasks)
            .header("authorization", bearer(t))
            .json(&json!({"agent": "claude", "title": "the first customer's"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }

    // The slug is deleted and taken again by another customer, a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ok(d.run(&["tenant", "delete", "acme", "--purge"]));
    ok(d.run(&["tenant", "create", "acme", "--plan", "pro"]));

    for (name, t) in [("bound to the id", &by_id), ("slug-only", &by_iat)] {
        for req in [
            http.get(&tasks),
            http.post(&tasks)
                .json(&json!({"agent": "claude", "title": "stale"})),
        ] {
            let (status, code, message) =
                error_of(req.header("authorization", bearer(t)).send().await.unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {message}");
            assert_eq!(code, "unauthorized");
            assert!(message.contains("earlier tenant"), "{name}: {message}");
        }
    }
    // A slug-only token without iat can never be told apart: refused, saying why.
    let undated = signed(json!({
        "sub": "u", "tenant": "acme", "exp": now_s() + 600,
        "iss": "tenantry", "aud": "tenantry-api",
    }));
    let (status, _, message) = error_of(
        http.get(&tasks)
            .header("authorization", bearer(&undated))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.contains("neither tenant_id nor iat"), "{message}");

    // The new customer's own tokens work, and see none of the first customer's tasks.
    for t in [
        ok(d.run(&["token", "issue", "--tenant", "acme", "--sub", "u2"])),
        token("acme", None),
    ] {
        let resp = http
            .get(&tasks)
            .header("authorization", bearer(&t))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["items"].as_array().unwrap().len(), 0, "{body}");
    }
    // A token for a tenant that does not exist cannot be issued by the CLI.
    let out = d.run(&["token", "issue", "--tenant", "ghost", "--sub", "u"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn admin_tokens_come_from_their_own_trust_root() {
    let d = Deployment::new().await;
    ok(d.run(&["tenant", "create", "acme", "--plan", "enterprise"]));
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let admin_url = format!("{}/admin/v1/tenants", r.base);

    // A tenant token with scope admin — as a customer-facing identity provider might
    // sign — is not an admin token.
    for scope in [Some("admin"), Some("read admin write"), None] {
        let (status, code, message) = error_of(
            http.get(&admin_url)
                .header("authorization", bearer(&token("acme", scope)))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{scope:?}: {message}");
        assert_eq!(code, "forbidden");
        assert!(message.contains("tenant token"), "{message}");
    }
    // Admin claims (issuer, audience, scope) signed with the tenants' key: 401.
    let forged = signed(json!({
        "sub": "evil", "exp": now_s() + 600, "iat": now_s(),
        "iss": "tenantry-admin", "aud": "tenantry-admin-api", "scope": "admin",
    }));
    let resp = http
        .get(&admin_url)
        .header("authorization", bearer(&forged))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // `token issue --admin` and the admin root's own tokens open the admin API.
    let cli_admin = ok(d.run(&["token", "issue", "--admin", "--sub", "ops"]));
    for t in [cli_admin.clone(), admin_token()] {
        let resp = http
            .get(&admin_url)
            .header("authorization", bearer(&t))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // An admin token is nobody's tenant token.
    let resp = http
        .get(format!("{}/v1/tasks", r.base))
        .header("authorization", bearer(&cli_admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // --admin and --tenant do not mix.
    let out = d.run(&[
        "token", "issue", "--admin", "--tenant", "acme", "--sub", "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
