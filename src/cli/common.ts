/**
 * What both CLIs share: the default store location, size and duration parsing, and the rule that
 * an error is one line on stderr and a non-zero exit.
 */
import os from 'node:os'
import path from 'node:path'
import { UserError } from '../errors.js'

/** The store used when none is named: $SNAPFS_STORE, else ~/.local/share/snapfs/default. */
export function defaultStore (): string {
  const env = process.env.SNAPFS_STORE
  if (env !== undefined && env.length > 0) return path.resolve(env)
  const data = process.env.XDG_DATA_HOME ?? path.join(os.homedir(), '.local', 'share')
  return path.join(data, 'snapfs', 'default')
}

const UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }

/** "256M", "1G", "64MiB", "1048576" → bytes. */
export function parseSize (text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim())
  if (match === null) throw new UserError(`invalid size "${text}" (examples: 256M, 1G, 1048576)`)
  return Math.floor(parseFloat(match[1]) * UNITS[match[2].toUpperCase()])
}

/** "2", "2s", "500ms" → milliseconds. */
export function parseDuration (text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s)?$/.exec(text.trim())
  if (match === null) throw new UserError(`invalid duration "${text}" (examples: 2, 2s, 500ms)`)
  return Math.round(parseFloat(match[1]) * (match[2] === 'ms' ? 1 : 1000))
}

export function formatBytes (bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`
}

/** Rows of cells as aligned columns (the header is the first row), one line each. */
export function formatTable (rows: string[][]): string {
  const widths = rows[0].map((_, column) => Math.max(...rows.map(row => row[column].length)))
  return rows.map(row => row.map((cell, column) => column === row.length - 1 ? cell : cell.padEnd(widths[column])).join('  ')).join('\n') + '\n'
}

/** Runs a CLI action: a UserError (or any error) becomes one line and a non-zero exit. */
export async function runAction (program: string, action: () => Promise<void>): Promise<void> {
  try {
    await action()
  } catch (err) {
    const exitCode = err instanceof UserError ? err.exitCode : 1
    const message = err instanceof Error ? err.message : String(err)
    process.stderr.write(`${program}: ${message}\n`)
    if (!(err instanceof UserError) && process.env.DEBUG !== undefined) process.stderr.write(`${(err as Error).stack ?? ''}\n`)
    process.exit(exitCode)
  }
}
