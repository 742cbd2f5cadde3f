// Microphone capture in the audio thread: any device rate -> 16 kHz mono PCM16, posted in 40 ms blocks.
// Resampling: a windowed-sinc low-pass below 8 kHz (no aliasing into the speech band), then linear
// interpolation at the 16 kHz sample times. At 16 kHz the samples pass through unchanged.
const OUT_RATE = 16000;
const BLOCK = 640; // 40 ms at 16 kHz

function lowpass(rate) {
  if (rate <= OUT_RATE) return new Float32Array([1]);
  const taps = 31, mid = (taps - 1) / 2, fc = 7200 / rate;
  const h = new Float32Array(taps);
  let sum = 0;
  for (let n = 0; n < taps; n++) {
    const x = n - mid;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    h[n] = sinc * (0.5 - 0.5 * Math.cos((2 * Math.PI * n) / (taps - 1)));
    sum += h[n];
  }
  for (let n = 0; n < taps; n++) h[n] /= sum;
  return h;
}

class Capture16k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.h = lowpass(sampleRate);
    this.hist = new Float32Array(this.h.length);
    this.at = 0; // ring position in hist
    this.t = 1; // next output time, in input samples after the previous filtered sample
    this.prev = 0;
    this.out = new Int16Array(BLOCK);
    this.n = 0;
  }

  filter(x) {
    const h = this.h, hist = this.hist, len = h.length;
    hist[this.at] = x;
    let y = 0;
    for (let k = 0, i = this.at; k < len; k++) {
      y += h[k] * hist[i];
      i = i === 0 ? len - 1 : i - 1;
    }
    this.at = (this.at + 1) % len;
    return y;
  }

  emit(y) {
    const s = Math.max(-1, Math.min(1, y));
    this.out[this.n++] = s < 0 ? s * 32768 : s * 32767;
    if (this.n === BLOCK) {
      this.port.postMessage(this.out.buffer, [this.out.buffer]);
      this.out = new Int16Array(BLOCK);
      this.n = 0;
    }
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const f = this.filter(channel[i]);
      while (this.t <= 1) {
        this.emit(this.prev + (f - this.prev) * this.t);
        this.t += this.step;
      }
      this.t -= 1;
      this.prev = f;
    }
    return true;
  }
}

registerProcessor("capture-16k", Capture16k);
