/** Progress reporting for long work. The library emits events; the CLI draws them. */
export interface ProgressEvent {
  /** What is being done, e.g. "compress base" or "flash". */
  task: string;
  done: number;
  total?: number;
  unit?: 'bytes' | 'items';
  /** bytes (or items) per second */
  rate?: number;
  /** seconds left */
  eta?: number;
  note?: string;
  /** the last event of this task */
  final?: boolean;
}

export type ProgressSink = (ev: ProgressEvent) => void;

export const noProgress: ProgressSink = () => {};

/** Tracks rate and time left for a byte counter. */
export class RateMeter {
  private readonly start = Date.now();
  constructor(
    private readonly sink: ProgressSink,
    private readonly task: string,
    private readonly total?: number,
    private readonly unit: 'bytes' | 'items' = 'bytes',
  ) {}
  private last = 0;
  update(done: number, final = false, note?: string): void {
    const now = Date.now();
    if (!final && now - this.last < 200) return;
    this.last = now;
    const secs = Math.max(0.001, (now - this.start) / 1000);
    const rate = done / secs;
    const eta = this.total && rate > 0 ? (this.total - done) / rate : undefined;
    this.sink({ task: this.task, done, total: this.total, unit: this.unit, rate, eta, final, note });
  }
}
