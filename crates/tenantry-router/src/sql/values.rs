//! Values of `/v1/sql`: JSON parameters bound to the statement's types, and any
//! column value as JSON.

use std::error::Error;

use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

/// A JSON value bound to whatever type the statement's parameter has.
#[derive(Debug)]
pub(super) struct JsonParam(pub(super) Value);

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for JsonParam {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let v = &self.0;
        if v.is_null() {
            return Ok(IsNull::Yes);
        }
        let wrong = || -> BoxError { format!("parameter of type {ty} cannot take {v}").into() };
        match *ty {
            Type::BOOL => v.as_bool().ok_or_else(wrong)?.to_sql(ty, out),
            Type::INT2 => i16::try_from(v.as_i64().ok_or_else(wrong)?)?.to_sql(ty, out),
            Type::INT4 => i32::try_from(v.as_i64().ok_or_else(wrong)?)?.to_sql(ty, out),
            Type::INT8 => v.as_i64().ok_or_else(wrong)?.to_sql(ty, out),
            Type::FLOAT4 => (v.as_f64().ok_or_else(wrong)? as f32).to_sql(ty, out),
            Type::FLOAT8 => v.as_f64().ok_or_else(wrong)?.to_sql(ty, out),
            Type::JSON | Type::JSONB => v.to_sql(ty, out),
            Type::UUID => v
                .as_str()
                .ok_or_else(wrong)?
                .parse::<uuid::Uuid>()?
                .to_sql(ty, out),
            Type::TIMESTAMPTZ => v
                .as_str()
                .ok_or_else(wrong)?
                .parse::<DateTime<Utc>>()?
                .to_sql(ty, out),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => match v {
                Value::String(s) => s.as_str().to_sql(&Type::TEXT, out),
                other => other.to_string().as_str().to_sql(&Type::TEXT, out),
            },
            _ => Err(format!(
                "parameters of type {ty} are not supported; cast it in SQL, e.g. $1::text::{ty}"
            )
            .into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Any column value as JSON; types without a JSON form come back as their type's name.
pub(super) struct Cell(pub(super) Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let v = match *ty {
            Type::BOOL => json!(bool::from_sql(ty, raw)?),
            Type::INT2 => json!(i16::from_sql(ty, raw)?),
            Type::INT4 => json!(i32::from_sql(ty, raw)?),
            Type::INT8 => json!(i64::from_sql(ty, raw)?),
            Type::OID => json!(u32::from_sql(ty, raw)?),
            Type::FLOAT4 => json!(f32::from_sql(ty, raw)?),
            Type::FLOAT8 => json!(f64::from_sql(ty, raw)?),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => {
                json!(<&str>::from_sql(ty, raw)?)
            }
            Type::JSON | Type::JSONB => Value::from_sql(ty, raw)?,
            Type::UUID => json!(uuid::Uuid::from_sql(ty, raw)?.to_string()),
            Type::TIMESTAMPTZ => json!(DateTime::<Utc>::from_sql(ty, raw)?.to_rfc3339()),
            Type::TIMESTAMP => json!(NaiveDateTime::from_sql(ty, raw)?.to_string()),
            Type::DATE => json!(NaiveDate::from_sql(ty, raw)?.to_string()),
            Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => {
                json!(Vec::<Option<String>>::from_sql(ty, raw)?)
            }
            Type::INT4_ARRAY => json!(Vec::<Option<i32>>::from_sql(ty, raw)?),
            Type::INT8_ARRAY => json!(Vec::<Option<i64>>::from_sql(ty, raw)?),
            _ => json!(format!("<{ty}>")),
        };
        Ok(Cell(v))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Cell(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}
