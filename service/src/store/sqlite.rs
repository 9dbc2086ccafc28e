//! The sqlite backend of the store. (Skeleton: being implemented.)

use async_trait::async_trait;
use kwm_schemas::api::BatchReceipt;
use kwm_schemas::{AgbCode, WireRecord};
use uuid::Uuid;

use super::{NewBatch, NewToken, Provider, PutBatch, Store, StoreError, TokenRecord};

fn todo_err() -> StoreError {
    StoreError::Other(anyhow::anyhow!("the sqlite store is not implemented yet"))
}

#[derive(Debug)]
pub struct SqliteStore {}

impl SqliteStore {
    pub async fn connect(_url: &str) -> Result<Self, StoreError> {
        Err(todo_err())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Err(todo_err())
    }
    async fn put_provider(&self, _p: &Provider) -> Result<(), StoreError> {
        Err(todo_err())
    }
    async fn get_provider(&self, _agb: AgbCode) -> Result<Option<Provider>, StoreError> {
        Err(todo_err())
    }
    async fn list_providers(&self) -> Result<Vec<Provider>, StoreError> {
        Err(todo_err())
    }
    async fn put_token(&self, _t: &NewToken) -> Result<i64, StoreError> {
        Err(todo_err())
    }
    async fn get_token(&self, _h: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        Err(todo_err())
    }
    async fn put_batch(&self, _b: &NewBatch) -> Result<PutBatch, StoreError> {
        Err(todo_err())
    }
    async fn get_batch(&self, _p: AgbCode, _id: Uuid) -> Result<Option<BatchReceipt>, StoreError> {
        Err(todo_err())
    }
    async fn list_batches(&self, _p: AgbCode) -> Result<Vec<BatchReceipt>, StoreError> {
        Err(todo_err())
    }
    async fn count_trajectories(&self, _p: Option<AgbCode>) -> Result<u64, StoreError> {
        Err(todo_err())
    }
    async fn list_trajectories(&self, _p: AgbCode) -> Result<Vec<WireRecord>, StoreError> {
        Err(todo_err())
    }
}
