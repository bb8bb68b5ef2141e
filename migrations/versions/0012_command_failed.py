"""order commands the sequencer set aside

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23 17:00:00

order_commands.status may be `failed`: a command that failed alone, twice, is set aside by the
sequencer (exchange.sequencer) instead of stalling its instrument; its result holds the error.
"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

OLD_STATUSES = ('pending', 'done')
NEW_STATUSES = OLD_STATUSES + ('failed',)


def _in(values):
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade():
    with op.batch_alter_table('order_commands', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_order_commands_command_status'), type_='check')
        batch_op.create_check_constraint('command_status', _in(NEW_STATUSES))


def downgrade():
    op.execute("UPDATE order_commands SET status = 'done' WHERE status = 'failed'")
    with op.batch_alter_table('order_commands', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_order_commands_command_status'), type_='check')
        batch_op.create_check_constraint('command_status', _in(OLD_STATUSES))
