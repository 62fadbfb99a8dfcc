"""The azure target: Cosmos DB (NoSQL) event and view store, Service Bus topic with a session
subscription per consumer group, Blob Storage archive, Container Apps (api and worker) on a
VNet, one user-assigned managed identity with data-plane roles scoped to each resource,
Key Vault (RBAC, purge protection) holding the API token and the customer-managed key,
private endpoints and DNS for Cosmos DB, Blob Storage and Key Vault (and Service Bus on
Premium), and Log Analytics.
"""
