"""Notifications: topics, subscriptions, routes, durable outboxes and delivery workers."""
