"""Every ORM model, in one package: one MetaData for Alembic, no import cycles between domains."""

from {{ cookiecutter.project_slug }}.models.base import Base
from {{ cookiecutter.project_slug }}.models.order import Order, OrderItem, OrderStatus
from {{ cookiecutter.project_slug }}.models.product import Inventory, Product
from {{ cookiecutter.project_slug }}.models.user import User

__all__ = ["Base", "Inventory", "Order", "OrderItem", "OrderStatus", "Product", "User"]
