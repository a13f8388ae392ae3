//! The bare handlers the router is measured against: actix-web and deadpool-postgres, no
//! tenancy, the same query and the same JSON, on the router's number of workers.
//!
//! * [`one_database`]: one database, one pool of 10 shared by the workers (the
//!   enterprise plan's size): the 1- and 100-tenant scenarios' baseline.
//! * [`databases`]: a pool of one connection per database, as many databases as the
//!   100-tenant scenario's tenants, each as its tenant's own role (the router's
//!   authentication and privileges): what the same machine serves when the queries are
//!   spread over that many databases and backends, which is the most any router could
//!   serve there.

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

use super::WORKERS;

pub type Pool = deadpool_postgres::Pool;

/// A pool of `size` connections to `database` as `user`, its sessions named `app`.
pub fn pool(
    pg: &TestCluster,
    database: &str,
    (user, password): (&str, &str),
    size: usize,
    app: &str,
) -> Pool {
    let mut cfg = deadpool_postgres::Config::new();
    cfg.host = Some("127.0.0.1".into());
    cfg.port = Some(pg.port());
    cfg.user = Some(user.into());
    cfg.password = Some(password.into());
    cfg.dbname = Some(database.into());
    cfg.application_name = Some(app.into());
    cfg.pool = Some(deadpool_postgres::PoolConfig::new(size));
    cfg.create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    )
    .unwrap()
}

/// The task `id`, read through `pool`, as the router's `GET /v1/tasks/{id}` answers it.
async fn task(pool: &Pool, id: Uuid) -> HttpResponse {
    let client = pool.get().await.unwrap();
    let st = client.prepare_cached(super::TASK_BY_ID).await.unwrap();
    answer(client.query_opt(&st, &[&id]).await.unwrap())
}

/// A task's row (or none) as the router's `GET /v1/tasks/{id}` answers it.
pub fn answer(row: Option<tokio_postgres::Row>) -> HttpResponse {
    match row {
        Some(r) => HttpResponse::Ok().json(serde_json::json!({
            "id": r.get::<_, Uuid>(0), "user_id": r.get::<_, String>(1), "agent": r.get::<_, String>(2),
            "title": r.get::<_, String>(3), "input": r.get::<_, Option<serde_json::Value>>(4),
            "status": r.get::<_, String>(5), "output": r.get::<_, Option<serde_json::Value>>(6),
            "cost_cents": r.get::<_, i32>(7),
            "created_at": r.get::<_, chrono::DateTime<chrono::Utc>>(8),
            "updated_at": r.get::<_, chrono::DateTime<chrono::Utc>>(9),
        })),
        None => HttpResponse::NotFound().finish(),
    }
}

/// Serves the routes `configure` adds on `WORKERS` workers; its handle and base URL.
pub fn serve(
    configure: impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
) -> (ServerHandle, String) {
    let server = HttpServer::new(move || App::new().configure(configure.clone()))
        .workers(WORKERS)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (handle, format!("http://{addr}"))
}

/// `GET /tasks/{id}` from one database, through one pool of 10 as the superuser.
pub fn one_database(pg: &TestCluster, database: &str, app: &str) -> (ServerHandle, String) {
    async fn get(pool: web::Data<Pool>, id: web::Path<Uuid>) -> HttpResponse {
        task(&pool, id.into_inner()).await
    }
    let superuser = secrecy::ExposeSecret::expose_secret(pg.password());
    let data = web::Data::new(pool(pg, database, (pg.superuser(), superuser), 10, app));
    serve(move |app| {
        app.app_data(data.clone())
            .route("/tasks/{id}", web::get().to(get));
    })
}

/// `GET /tasks/{n}/{id}` from the `n`th of `pools`.
pub fn databases(pools: Vec<Pool>) -> (ServerHandle, String) {
    async fn get(pools: web::Data<Vec<Pool>>, path: web::Path<(usize, Uuid)>) -> HttpResponse {
        let (n, id) = path.into_inner();
        match pools.get(n) {
            Some(pool) => task(pool, id).await,
            None => HttpResponse::NotFound().finish(),
        }
    }
    let data = web::Data::new(pools);
    serve(move |app| {
        app.app_data(data.clone())
            .route("/tasks/{n}/{id}", web::get().to(get));
    })
}
