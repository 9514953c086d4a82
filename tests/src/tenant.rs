//! A vhost and a user of one test's own, the user allowed on the vhost.

use crate::broker::{TestUser, TestVhost};
use crate::client::amqp_url;
use crate::raw::RawOptions;
use anyhow::Result;
use std::net::SocketAddr;

/// A vhost and a user that exist for one test (both deleted on drop), the user with full
/// permissions on the vhost. With a tenant of its own a test has warren's hub for (user,
/// vhost) and its broker connections to itself, can list the vhost's exchanges and queues
/// exactly, and gets RabbitMQ texts that name the vhost no other test shares.
#[derive(Debug)]
pub struct Tenant {
    /// The vhost.
    pub vhost: TestVhost,
    /// The user.
    pub user: TestUser,
}

impl Tenant {
    /// Creates a vhost and a user named after `prefix` and allows the user on the vhost.
    pub async fn create(prefix: &str) -> Result<Tenant> {
        let vhost = TestVhost::create(prefix).await?;
        let user = TestUser::create(prefix).await?;
        user.grant(&vhost.name).await?;
        Ok(Tenant { vhost, user })
    }

    /// The AMQP URL of the user and the vhost at `addr` (warren's, or the broker's).
    #[must_use]
    pub fn url(&self, addr: SocketAddr) -> String {
        amqp_url(addr, &self.user.name, &self.user.password, &self.vhost.name)
    }

    /// Raw-client options for the user and the vhost.
    #[must_use]
    pub fn raw_options(&self) -> RawOptions {
        RawOptions::new(&self.user.name, &self.user.password, &self.vhost.name)
    }
}
