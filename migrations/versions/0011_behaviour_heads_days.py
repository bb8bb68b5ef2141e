"""behaviour programme heads and day totals

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23 16:40:00

registry.behaviour.ProgrammeHead: one row per programme, `chunks` counts the chunks ever recorded in
it (an importer's memo of the members holds while the count is where its last chunk left it).
registry.behaviour.ProgrammeDay: the accepted grams of each programme day, kept by the import with
the events; closing a programme period reads a range of them instead of the events. Filled here
from the events already recorded.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('behaviour_programme_heads',
    sa.Column('programme_id', sa.Integer(), nullable=False),
    sa.Column('chunks', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['programme_id'], ['projects.id'], name=op.f('fk_behaviour_programme_heads_programme_id_projects')),
    sa.PrimaryKeyConstraint('programme_id', name=op.f('pk_behaviour_programme_heads'))
    )
    op.create_table('behaviour_programme_days',
    sa.Column('programme_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('reduction_g', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['programme_id'], ['projects.id'], name=op.f('fk_behaviour_programme_days_programme_id_projects')),
    sa.PrimaryKeyConstraint('programme_id', 'day', name=op.f('pk_behaviour_programme_days'))
    )
    op.execute("INSERT INTO behaviour_programme_days (programme_id, day, reduction_g) "
               "SELECT programme_id, day, SUM(reduction_g) FROM behaviour_events "
               "WHERE status = 'accepted' AND day IS NOT NULL GROUP BY programme_id, day HAVING SUM(reduction_g) <> 0")


def downgrade():
    op.drop_table('behaviour_programme_days')
    op.drop_table('behaviour_programme_heads')
