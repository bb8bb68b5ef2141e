"""emission factors

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 10:00:00.000000

Written by hand to match registry.factors.EmissionFactor. The shipped rows are not inserted here:
`registry.factors.sync_shipped(session)` loads them from registry/data/emission_factors.csv, so a
new package version brings new rows without a migration.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('emission_factors',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=80), nullable=False),
    sa.Column('value', sa.String(length=40), nullable=False),
    sa.Column('unit', sa.String(length=40), nullable=False),
    sa.Column('gas_basis', sa.String(length=8), nullable=False),
    sa.Column('region', sa.String(length=32), nullable=False),
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('valid_from', sa.Date(), nullable=True),
    sa.Column('valid_to', sa.Date(), nullable=True),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("gas_basis IN ('CO2', 'CO2e')", name=op.f('ck_emission_factors_gas_basis')),
    sa.CheckConstraint("origin IN ('shipped', 'operator')", name=op.f('ck_emission_factors_origin')),
    sa.CheckConstraint('valid_from IS NULL OR valid_to IS NULL OR valid_from <= valid_to', name=op.f('ck_emission_factors_validity')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_emission_factors')),
    sa.UniqueConstraint('key', 'region', 'year', name=op.f('uq_emission_factors_key_region_year'))
    )


def downgrade():
    op.drop_table('emission_factors')
