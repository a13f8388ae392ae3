//! An export written out: JSON (the records and what could not be read), CSV, Stripe
//! meter events, or CloudEvents as OpenMeter ingests them. Every shape carries the
//! record's idempotency key (`identifier`, `id`), so a receiver drops a second copy.

use serde_json::{json, Value};

use crate::{Export, MeteringError, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Stripe,
    CloudEvents,
}

impl Format {
    pub const NAMES: [&'static str; 4] = ["json", "csv", "stripe", "cloudevents"];

    pub fn parse(text: &str) -> Result<Self, MeteringError> {
        match text {
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            "stripe" => Ok(Self::Stripe),
            "cloudevents" => Ok(Self::CloudEvents),
            _ => Err(MeteringError::BadInput(format!(
                "format {text:?} is none of json, csv, stripe, cloudevents"
            ))),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json | Self::Stripe => "application/json",
            Self::Csv => "text/csv; charset=utf-8",
            Self::CloudEvents => "application/cloudevents-batch+json",
        }
    }

    /// The export in this format. JSON states the tenants that could not be read
    /// (`errors`); the others hold only the tenants read in full, so sending them and,
    /// later, a new export once those tenants can be read bills every tenant once.
    pub fn render(self, export: &Export) -> String {
        match self {
            Self::Json => to_text(&json!({
                "period": export.period,
                "tenants": export.tenants,
                "records": export.records,
                "errors": export.errors,
            })),
            Self::Csv => csv(&export.records),
            Self::Stripe => to_text(&export.records.iter().map(stripe).collect::<Vec<_>>()),
            Self::CloudEvents => {
                to_text(&export.records.iter().map(cloud_event).collect::<Vec<_>>())
            }
        }
    }
}

fn to_text(v: &impl serde::Serialize) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("records serialize");
    s.push('\n');
    s
}

const CSV_DIMENSIONS: [&str; 4] = ["agent", "route", "status_class", "plan"];

fn csv(records: &[Record]) -> String {
    let mut out = String::from("idempotency_key,tenant_id,slug,period,meter,");
    out.push_str(&CSV_DIMENSIONS.join(","));
    out.push_str(",value\n");
    for r in records {
        let mut fields = vec![
            r.idempotency_key.clone(),
            r.tenant_id.to_string(),
            r.slug.clone(),
            r.period.clone(),
            r.meter.as_str().to_owned(),
        ];
        fields.extend(
            CSV_DIMENSIONS
                .iter()
                .map(|d| r.dimensions.get(*d).cloned().unwrap_or_default()),
        );
        fields.push(r.value.to_string());
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// RFC 4180: quoted when it holds a comma, quote or line break; quotes doubled.
fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_owned()
    }
}

/// A Stripe meter event (`POST /v1/billing/meter_events`): the customer is the tenant
/// id (map it to a Stripe customer with the meter's `customer_mapping`), the value a
/// string, the dimensions beside it in the payload.
fn stripe(r: &Record) -> Value {
    let mut payload = serde_json::Map::new();
    payload.insert("stripe_customer_id".into(), r.tenant_id.to_string().into());
    payload.insert("value".into(), r.value.to_string().into());
    for (k, v) in &r.dimensions {
        payload.insert(k.clone(), v.clone().into());
    }
    json!({
        "event_name": format!("tenantry_{}", r.meter.as_str()),
        "identifier": r.idempotency_key,
        "timestamp": r.at.timestamp(),
        "payload": payload,
    })
}

/// A CloudEvent as OpenMeter ingests it: `type` the meter, `subject` the tenant id.
fn cloud_event(r: &Record) -> Value {
    let mut data = serde_json::Map::new();
    data.insert("value".into(), Value::Number(r.value.clone()));
    data.insert("period".into(), r.period.clone().into());
    data.insert("slug".into(), r.slug.clone().into());
    for (k, v) in &r.dimensions {
        data.insert(k.clone(), v.clone().into());
    }
    json!({
        "specversion": "1.0",
        "id": r.idempotency_key,
        "source": "tenantry",
        "type": r.meter.as_str(),
        "subject": r.tenant_id.to_string(),
        "time": r.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Meter, Period};

    #[test]
    fn each_shape_carries_the_key_and_the_value() {
        let id = uuid::Uuid::now_v7();
        let p = Period::parse("2025-10").unwrap();
        let r = Record::new(
            id,
            "acme",
            p,
            Meter::ApiRequests,
            &[("route", "/v1/tasks/{id}"), ("status_class", "2xx")],
            5.into(),
        );
        let s = stripe(&r);
        assert_eq!(s["event_name"], "tenantry_api_requests");
        assert_eq!(s["identifier"], r.idempotency_key.as_str());
        assert_eq!(s["payload"]["stripe_customer_id"], id.to_string());
        assert_eq!(s["payload"]["value"], "5");
        assert_eq!(s["payload"]["route"], "/v1/tasks/{id}");
        assert_eq!(s["timestamp"], p.end().timestamp() - 1);
        let c = cloud_event(&r);
        assert_eq!(c["specversion"], "1.0");
        assert_eq!(c["id"], r.idempotency_key.as_str());
        assert_eq!(c["type"], "api_requests");
        assert_eq!(c["subject"], id.to_string());
        assert_eq!(c["time"], "2025-10-31T23:59:59Z");
        assert_eq!(c["data"]["value"], 5);
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        let text = csv(&[r]);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("idempotency_key,tenant_id,slug,period,meter,agent,route,status_class,plan,value")
        );
        assert!(lines
            .next()
            .unwrap()
            .ends_with(",acme,2025-10,api_requests,,/v1/tasks/{id},2xx,,5"));
    }
}
