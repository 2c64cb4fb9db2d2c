//! [`ReplicaStore`] on the real SDK: full listings, reads with properties, writes with
//! properties, property updates, soft deletes and recoveries.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use azure_core::time::OffsetDateTime;
use azure_security_keyvault_secrets::models::{
    Secret, SecretAttributes, SetSecretParameters, UpdateSecretPropertiesParameters,
};
use azure_security_keyvault_secrets::ResourceExt;
use futures::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};

use super::{classify, malformed, AzureStore};
use crate::error::StoreError;
use crate::name::SecretName;
use crate::replicate::{Listed, Properties, ReadVersion, ReplicaStore};

pub(super) fn unix(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(|t| t.unix_timestamp())
}

pub(super) fn time(t: Option<i64>) -> Result<Option<OffsetDateTime>, StoreError> {
    t.map(|s| OffsetDateTime::from_unix_timestamp(s).map_err(|_| malformed("a time out of range")))
        .transpose()
}

/// A version's editable properties as the SDK gives them (what the replicator compares, and
/// what the client keeps with a value).
pub(super) fn properties(
    attributes: Option<&SecretAttributes>,
    content_type: Option<String>,
    tags: Option<HashMap<String, String>>,
) -> Properties {
    Properties::default()
        .with_enabled(attributes.and_then(|a| a.enabled).unwrap_or(true))
        .with_expires(unix(attributes.and_then(|a| a.expires)))
        .with_not_before(unix(attributes.and_then(|a| a.not_before)))
        .with_content_type(content_type)
        .with_tags(
            tags.unwrap_or_default()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        )
}

fn attributes(p: &Properties) -> Result<SecretAttributes, StoreError> {
    Ok(SecretAttributes {
        enabled: Some(p.enabled()),
        expires: time(p.expires())?,
        not_before: time(p.not_before())?,
        ..Default::default()
    })
}

fn tags(p: &Properties) -> HashMap<String, String> {
    p.tags()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(super) fn version_of(secret: &Secret) -> Result<String, StoreError> {
    secret
        .resource_id()
        .ok()
        .and_then(|id| id.version)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| malformed("answer without a version id"))
}

#[async_trait]
impl ReplicaStore for AzureStore {
    async fn list_items(&self) -> Result<Vec<Listed>, StoreError> {
        let mut pager = self
            .client
            .list_secret_properties(None)
            .map_err(|e| classify(&e))?;
        let mut out = Vec::new();
        while let Some(p) = pager.try_next().await.map_err(|e| classify(&e))? {
            let id = p
                .resource_id()
                .map_err(|_| malformed("listed secret without an id"))?;
            let created = unix(p.attributes.as_ref().and_then(|a| a.created));
            let props = properties(p.attributes.as_ref(), p.content_type, p.tags);
            out.push(
                Listed::new(id.name, props)
                    .with_created(created)
                    .with_managed(p.managed.unwrap_or(false)),
            );
        }
        Ok(out)
    }

    async fn read(&self, name: &SecretName) -> Result<ReadVersion, StoreError> {
        let secret = self
            .client
            .get_secret(name.as_str(), None)
            .await
            .map_err(|e| classify(&e))?
            .into_model()
            .map_err(|e| classify(&e))?;
        let version = version_of(&secret)?;
        let created = unix(secret.attributes.as_ref().and_then(|a| a.created));
        let props = properties(secret.attributes.as_ref(), secret.content_type, secret.tags);
        let value = secret
            .value
            .ok_or_else(|| malformed("answer without a value"))?;
        Ok(ReadVersion::new(
            SecretString::from(value),
            version,
            created,
            props,
        ))
    }

    async fn write(
        &self,
        name: &SecretName,
        value: &SecretString,
        properties: &Properties,
    ) -> Result<String, StoreError> {
        let params = SetSecretParameters {
            value: Some(value.expose_secret().to_string()),
            content_type: properties.content_type().map(str::to_string),
            tags: Some(tags(properties)),
            secret_attributes: Some(attributes(properties)?),
        };
        self.set_with(name, params).await
    }

    async fn update(&self, name: &SecretName, properties: &Properties) -> Result<(), StoreError> {
        let params = UpdateSecretPropertiesParameters {
            content_type: properties.content_type().map(str::to_string),
            tags: Some(tags(properties)),
            secret_attributes: Some(attributes(properties)?),
        };
        let body = params
            .try_into()
            .map_err(|_| malformed("cannot encode the request"))?;
        self.client
            .update_secret_properties(name.as_str(), body, None)
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }

    async fn soft_delete(&self, name: &SecretName) -> Result<(), StoreError> {
        self.client
            .delete_secret(name.as_str(), None)
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }

    async fn recover(&self, name: &SecretName) -> Result<(), StoreError> {
        self.client
            .recover_deleted_secret(name.as_str(), None)
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }
}
