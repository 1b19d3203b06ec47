//! `/metainfo`: what the App Connector lists, and whether each GetConnector
//! has every mapped field with a compatible type.

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldMeta {
    pub id: String,
    #[serde(default)]
    pub field_id: Option<String>,
    #[serde(default)]
    pub data_type: String,
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConnectorMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub fields: Vec<FieldMeta>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConnectorListEntry {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaInfoInfo {
    #[serde(default)]
    pub envid: Option<String>,
    #[serde(default)]
    pub app_name: Option<String>,
    #[serde(default)]
    pub token_expiry: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaInfo {
    #[serde(default)]
    pub get_connectors: Vec<ConnectorListEntry>,
    #[serde(default)]
    pub info: MetaInfoInfo,
}

/// What a mapped field must be able to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Date,
    Boolean,
    Decimal,
}

impl FieldKind {
    fn accepts(self, data_type: &str) -> bool {
        match self {
            FieldKind::Text => matches!(data_type, "string" | "int"),
            FieldKind::Date => data_type == "date",
            FieldKind::Boolean => matches!(data_type, "boolean" | "int"),
            FieldKind::Decimal => matches!(data_type, "decimal" | "int"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            FieldKind::Text => "string",
            FieldKind::Date => "date",
            FieldKind::Boolean => "boolean (or int 0/1)",
            FieldKind::Decimal => "decimal",
        }
    }
}

/// A mapped field that the connector lacks or types differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub connector: String,
    pub field: String,
    pub config_key: String,
    pub problem: String,
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GetConnector `{}`: field `{}` (config key {}) {}",
            self.connector, self.field, self.config_key, self.problem
        )
    }
}

/// Compares the mapping against a connector's metainfo.
pub fn check_fields(
    connector: &str,
    meta: &ConnectorMeta,
    wanted: &[(String, FieldKind, String)],
) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    for (field, kind, config_key) in wanted {
        let problem = match meta.fields.iter().find(|f| &f.id == field) {
            None => Some("does not exist: add it to the GetConnector in AFAS or fix the mapping".to_string()),
            Some(f) if !kind.accepts(&f.data_type) => {
                Some(format!("has type `{}`, but {} is needed", f.data_type, kind.name()))
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            problems.push(FieldProblem {
                connector: connector.to_string(),
                field: field.clone(),
                config_key: config_key.clone(),
                problem,
            });
        }
    }
    problems
}
