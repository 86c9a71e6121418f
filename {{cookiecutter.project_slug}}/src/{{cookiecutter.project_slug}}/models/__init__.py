"""Every ORM model, in one package: one MetaData for Alembic, no import cycles between domains."""

from {{ cookiecutter.project_slug }}.models.base import Base
from {{ cookiecutter.project_slug }}.models.dead_letter import DeadLetter
from {{ cookiecutter.project_slug }}.models.idempotency import IdempotencyKey
from {{ cookiecutter.project_slug }}.models.job import FINISHED, Job, JobResult, JobStatus
from {{ cookiecutter.project_slug }}.models.notification import Notification
from {{ cookiecutter.project_slug }}.models.order import Order, OrderItem, OrderStatus
from {{ cookiecutter.project_slug }}.models.outbox import InboxEntry, OutboxEvent
from {{ cookiecutter.project_slug }}.models.payment import PaymentEvent
from {{ cookiecutter.project_slug }}.models.product import Inventory, Product
from {{ cookiecutter.project_slug }}.models.revenue import DailyRevenue
from {{ cookiecutter.project_slug }}.models.upload import Upload, UploadPurpose, UploadStatus
from {{ cookiecutter.project_slug }}.models.user import User

__all__ = [
    "FINISHED",
    "Base",
    "DailyRevenue",
    "DeadLetter",
    "IdempotencyKey",
    "InboxEntry",
    "Inventory",
    "Job",
    "JobResult",
    "JobStatus",
    "Notification",
    "Order",
    "OrderItem",
    "OrderStatus",
    "OutboxEvent",
    "PaymentEvent",
    "Product",
    "Upload",
    "UploadPurpose",
    "UploadStatus",
    "User",
]
