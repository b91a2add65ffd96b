//! The attested document: the JSON content of the PKCS#7, read only after its signature
//! verified.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use instauth_verify::encoding::json_error_reason;

use crate::AzureError;

/// Leeway for clock skew between Azure and this server when checking `timeStamp`.
pub const TIMESTAMP_LEEWAY_SECONDS: i64 = 60;

/// The fields of an attested document instauth uses. Only `vmId` and `timeStamp` are required:
/// documents of 2019 lack `subscriptionId` (and `sku`, `licenseType`), and `location` is not
/// part of the attested document Azure serves today; unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttestedDocument {
    vm_id: String,
    #[serde(default)]
    subscription_id: Option<String>,
    #[serde(default)]
    location: Option<String>,
    time_stamp: TimeStamp,
}

/// `timeStamp` of an attested document: `"04/19/22 01:27:21 -0000"` (month/day/year).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeStamp {
    created_on: String,
    expires_on: String,
}

/// What a verified document says.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) vm_id: String,
    pub(crate) subscription_id: Option<String>,
    pub(crate) location: Option<String>,
}

fn parse_timestamp(field: &str, value: &str) -> Result<DateTime<Utc>, AzureError> {
    DateTime::parse_from_str(value, "%m/%d/%y %H:%M:%S %z")
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AzureError::MalformedDocument {
            reason: format!("timeStamp.{field} is not MM/DD/YY HH:MM:SS ±ZZZZ"),
        })
}

/// Parses verified `content` and checks its own lifetime at `now`.
pub(crate) fn read(content: &[u8], now: DateTime<Utc>) -> Result<Document, AzureError> {
    let doc: AttestedDocument =
        serde_json::from_slice(content).map_err(|e| AzureError::MalformedDocument {
            reason: json_error_reason(&e),
        })?;
    if doc.vm_id.is_empty() {
        return Err(AzureError::MalformedDocument {
            reason: "vmId is empty".into(),
        });
    }
    // The document's own lifetime bounds replay of a captured proof to hours, where the
    // signer certificate alone would allow months.
    let leeway = chrono::Duration::seconds(TIMESTAMP_LEEWAY_SECONDS);
    let created_on = parse_timestamp("createdOn", &doc.time_stamp.created_on)?;
    let expires_on = parse_timestamp("expiresOn", &doc.time_stamp.expires_on)?;
    if now > expires_on + leeway {
        return Err(AzureError::DocumentExpired { now, expires_on });
    }
    if now + leeway < created_on {
        return Err(AzureError::DocumentNotYetValid { now, created_on });
    }
    let present = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(Document {
        vm_id: doc.vm_id,
        subscription_id: present(doc.subscription_id),
        location: present(doc.location),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
    }

    const TS: &str = r#""timeStamp":{"createdOn":"04/19/22 01:27:21 -0000","expiresOn":"04/19/22 07:27:21 -0000"}"#;

    #[test]
    fn only_vm_id_and_time_stamp_are_required() {
        let now = at("2022-04-19T02:00:00Z");
        let d = read(format!(r#"{{"vmId":"vm",{TS}}}"#).as_bytes(), now).unwrap();
        assert_eq!(d.vm_id, "vm");
        assert_eq!(d.subscription_id, None);
        assert_eq!(d.location, None);
        let d = read(
            format!(r#"{{"vmId":"vm","subscriptionId":"s","location":"eastus","sku":"x","plan":{{}},{TS}}}"#)
                .as_bytes(),
            now,
        )
        .unwrap();
        assert_eq!(d.subscription_id.as_deref(), Some("s"));
        assert_eq!(d.location.as_deref(), Some("eastus"));
        let d = read(
            format!(r#"{{"vmId":"vm","subscriptionId":"","location":null,{TS}}}"#).as_bytes(),
            now,
        )
        .unwrap();
        assert_eq!((d.subscription_id, d.location), (None, None));
        for bad in [
            r#"{"subscriptionId":"s"}"#.to_string(),
            format!(r#"{{"vmId":"",{TS}}}"#),
            format!(r#"{{"vmId":"vm","subscriptionId":5,{TS}}}"#),
            r#"{"vmId":"vm"}"#.to_string(),
        ] {
            assert!(
                matches!(
                    read(bad.as_bytes(), now),
                    Err(AzureError::MalformedDocument { .. })
                ),
                "{bad}"
            );
        }
    }
}
