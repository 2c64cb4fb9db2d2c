//! The versions a file was rendered from or a program was started with, against what the
//! client holds now: how the files and `run` see a rotation, with no vault traffic.

use keyvault_failover::FailoverClient;

/// Each secret's name and the version given.
#[derive(Debug, Default)]
pub(crate) struct Given(Vec<(String, String)>);

impl Given {
    pub(crate) fn new(versions: Vec<(String, String)>) -> Given {
        Given(versions)
    }

    /// Whether the client holds another version of any of them now (a value it does not
    /// hold fresh, restored or past its refresh, says nothing).
    pub(crate) fn rotated(&self, client: &FailoverClient) -> bool {
        self.0.iter().any(|(name, version)| {
            client
                .get_cached(name)
                .is_some_and(|s| s.version() != version)
        })
    }

    /// Takes the versions the client holds now as given (a rotation acted on without new
    /// values).
    pub(crate) fn catch_up(&mut self, client: &FailoverClient) {
        for (name, v) in &mut self.0 {
            if let Some(s) = client.get_cached(name) {
                *v = s.version().to_string();
            }
        }
    }
}
