"""behaviour programme heads: the chunk count that tells an importer its memo of the members holds

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 16:20:00

registry.behaviour.ProgrammeHead: one row per programme, `chunks` counts the chunks ever recorded in
it (see `MemberMemo`).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('behaviour_programme_heads',
    sa.Column('programme_id', sa.Integer(), nullable=False),
    sa.Column('chunks', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['programme_id'], ['projects.id'], name=op.f('fk_behaviour_programme_heads_programme_id_projects')),
    sa.PrimaryKeyConstraint('programme_id', name=op.f('pk_behaviour_programme_heads'))
    )


def downgrade():
    op.drop_table('behaviour_programme_heads')
