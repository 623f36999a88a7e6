//! The server side of a sync: a tree rooted at `--root`, answering requests
//! from authenticated clients, with an optional read-only or write-only
//! policy.

use pareco_net::Service;
use pareco_proto::{Failure, FailureKind, Request, Response};

use crate::tree::BlockingTree;

/// What clients may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Push and pull.
    #[default]
    ReadWrite,
    /// Pull only: nothing is ever written.
    ReadOnly,
    /// Push only: no file content is ever read back (metadata and digests
    /// are, since a push needs them to send only what differs).
    WriteOnly,
}

/// Serves a tree to remote clients.
pub struct TreeService {
    tree: BlockingTree,
    access: Access,
}

impl TreeService {
    /// Serves `tree` under the `access` policy.
    pub fn new(tree: BlockingTree, access: Access) -> Self {
        TreeService { tree, access }
    }

    fn refusal(&self, request: &Request) -> Option<&'static str> {
        let reads_content =
            matches!(request, Request::ReadData { .. } | Request::ReadPatch { .. } | Request::ReadFiles { .. });
        match self.access {
            Access::ReadOnly if request.writes() => Some("this server is read-only (pull only)"),
            Access::WriteOnly if reads_content => Some("this server is write-only (push only)"),
            _ => None,
        }
    }
}

impl Service for TreeService {
    async fn call(&self, request: Request) -> Response {
        if let Some(why) = self.refusal(&request) {
            return Response::Failed(Failure::new(FailureKind::Refused, why));
        }
        self.tree.execute(request).await
    }
}
